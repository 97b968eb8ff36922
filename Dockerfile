# One image with every Sakuga binary (the Deployments choose theirs with `command`).
#   docker build -t sakuga:dev .
# Build stage: the workspace, release profile, locked dependencies.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/sakuga target/release/sakuga-auth target/release/sakuga-scheduler \
       target/release/sakuga-organizer target/release/sakuga-generator /out/

# Runtime: glibc and CA certificates only, no shell, non-root (uid 65532).
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sakuga-scheduler"]
CMD ["--help"]
