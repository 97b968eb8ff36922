//! `store`: StoreArtifact throughput of one organizer on each backend (a local folder, and
//! an S3 bucket on a SeaweedFS on loopback), in MiB/s and artifacts/s.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sakuga_benches::{Section, Stats};
use sakuga_proto::v1::{
    ArtifactHeader, JobKind, StoreArtifactRequest, file_service_client::FileServiceClient,
    store_artifact_request::Part,
};
use serde_json::json;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::{
    Settings,
    mesh::{Mesh, unlimited},
};

/// The chunk size a generator uploads in (its `upload_chunk_bytes` default).
const CHUNK: usize = 256 * 1024;

/// The payload sizes: (label, side of a square RGB image of noise). Noise does not
/// compress, so the PNG is about `3 × side²` bytes: 1 MiB and 8 MiB.
const SIZES: [(&str, u32); 2] = [("1 MiB", 592), ("8 MiB", 1672)];

/// A PNG of noise, `side`×`side`, that passes the organizer's checks (it decodes, is not
/// blank, has the job's dimensions).
fn noise_png(side: u32) -> anyhow::Result<Vec<u8>> {
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let rgb: Vec<u8> = (0..side * side * 3)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    Ok(sakuga_imaging::encode_rgb_png(side, side, &rgb)?)
}

/// CRC-32 (IEEE) of `bytes`, as PNG chunks carry it.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// `base` with a `tEXt` chunk carrying `note` after its header chunk: distinct bytes (so
/// every artifact is a blob of its own, as real ones are) without encoding the image again.
fn with_text(base: &[u8], note: &str) -> Vec<u8> {
    // Signature (8 bytes) and IHDR (4 length + 4 type + 13 data + 4 CRC).
    let at = 8 + 25;
    let mut chunk = b"tEXt".to_vec();
    chunk.extend_from_slice(b"bench\0");
    chunk.extend_from_slice(note.as_bytes());
    let mut out = Vec::with_capacity(base.len() + chunk.len() + 8);
    out.extend_from_slice(&base[..at]);
    out.extend_from_slice(&u32::try_from(chunk.len() - 4).unwrap().to_be_bytes());
    out.extend_from_slice(&chunk);
    out.extend_from_slice(&crc32(&chunk).to_be_bytes());
    out.extend_from_slice(&base[at..]);
    out
}

/// A running job leased to a generator, asking for one `side`×`side` image: (id, lease).
async fn leased_job(db: &tokio_postgres::Client, owner: &str, side: u32) -> anyhow::Result<(Uuid, Uuid)> {
    let (id, lease) = (Uuid::now_v7(), Uuid::new_v4());
    let side = i32::try_from(side)?;
    db.execute(
        "INSERT INTO jobs (id, owner_id, kind, backend, model, prompt, composed_prompt, width, height, steps, \
         batch_size, frames, fps, seed, cfg_scale, sampler, status, attempts, lease_token, lease_expires_at, \
         worker_id) VALUES ($1, $2, 'image', 'builtin', 'builtin', 'store bench', 'store bench', $3, $3, 1, 1, \
         0, 0, 7, 7.0, 'euler', 'running', 1, $4, now() + interval '1 hour', 'bench')",
        &[&id, &owner, &side, &lease],
    )
    .await?;
    Ok((id, lease))
}

/// One StoreArtifact call: the header, then the bytes in generator-sized chunks.
async fn upload(
    client: &mut FileServiceClient<tonic::transport::Channel>,
    (job, lease): (Uuid, Uuid),
    side: u32,
    bytes: Vec<u8>,
) -> anyhow::Result<()> {
    let header = ArtifactHeader {
        job_id: job.to_string(),
        lease_token: lease.to_string(),
        index: 0,
        kind: JobKind::Image.into(),
        mime_type: "image/png".into(),
        width: side,
        height: side,
        frames: 1,
        size_bytes: bytes.len() as u64,
        sha256: hex_of(&Sha256::digest(&bytes)),
        ..ArtifactHeader::default()
    };
    let mut parts = vec![StoreArtifactRequest { part: Some(Part::Header(header)) }];
    parts.extend(bytes.chunks(CHUNK).map(|c| StoreArtifactRequest { part: Some(Part::Chunk(c.to_vec())) }));
    client.store_artifact(tokio_stream::iter(parts)).await?;
    Ok(())
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// What one (backend, size) run measured.
struct Run {
    artifacts: usize,
    bytes: u64,
    wall: Duration,
    latencies: Vec<Duration>,
}

/// Stores `n` distinct artifacts made from `base` through `clients` concurrent clients
/// (each on its own connection), after one untimed warm-up upload.
async fn run_size(
    mesh: &Mesh,
    organizer: &str,
    (side, base): (u32, &[u8]),
    n: usize,
    clients: usize,
) -> anyhow::Result<Run> {
    let db = mesh.env.db().await?;
    let owner = Uuid::now_v7().to_string();
    let generator = mesh.env.identity("generator").await?;
    let mut warm = FileServiceClient::new(generator.channel(organizer)?);
    let job = leased_job(&db, &owner, side).await?;
    upload(&mut warm, job, side, with_text(base, "warm-up")).await?;
    // Jobs and payloads made before the clock starts: only uploads are timed.
    let mut work = Vec::with_capacity(n);
    for i in 0..n {
        work.push((
            leased_job(&db, &owner, side).await?,
            with_text(base, &format!("{i} {}", Uuid::new_v4())),
        ));
    }
    let bytes: u64 = work.iter().map(|(_, b)| b.len() as u64).sum();
    let work = Arc::new(std::sync::Mutex::new(work.into_iter().map(Some).collect::<Vec<_>>()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = FileServiceClient::new(generator.channel(organizer)?);
        let (work, next) = (work.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some((job, payload)) = work.lock().unwrap().get_mut(i).and_then(Option::take) else {
                    return Ok::<_, anyhow::Error>(latencies);
                };
                let t = Instant::now();
                upload(&mut client, job, side, payload).await?;
                latencies.push(t.elapsed());
            }
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Run { artifacts: latencies.len(), bytes, wall: started.elapsed(), latencies })
}

pub async fn run(settings: &Settings) -> anyhow::Result<Section> {
    let clients = settings.store_clients;
    let mut section = Section::new(
        "store",
        "StoreArtifact throughput: local disk and S3 (SeaweedFS)",
        &format!(
            "Auth, a scheduler and one organizer in this process, the organizer storing on local \
             disk (a temporary folder) or in an S3 bucket of a SeaweedFS 4.48 (`weed server -s3`) \
             on loopback, started for the run. Payloads are PNGs of RGB noise (it does not \
             compress: 592×592 ≈ 1 MiB, 1672×1672 ≈ 8 MiB), each made distinct by a text chunk \
             so every artifact is a blob of its own; each passes the organizer's checks \
             (size, sha256, full decode, dimensions, not blank) and gets a thumbnail. Jobs are \
             leased rows inserted beforehand. {clients} clients with the generator certificate, \
             each on its own mTLS connection, upload in {} KiB chunks as a generator does, \
             {} MiB of artifacts per (backend, size) after one untimed warm-up; the wall time \
             runs from the first header to the last response (checked, thumbnailed, committed \
             and recorded). MiB/s is payload bytes / wall time.",
            CHUNK / 1024,
            settings.store_mib
        ),
        &["backend", "payload", "artifacts", "clients", "wall", "MiB/s", "artifacts/s", "p50", "p95"],
    );
    let mesh = Mesh::start(false).await?;
    let bases = SIZES
        .iter()
        .map(|&(label, side)| Ok((label, side, noise_png(side)?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for backend in ["local", "s3"] {
        let dir = tempfile::tempdir()?;
        let mut oc = sakuga_testkit::organizer_config(&mesh.env, &mesh.auth, dir.path().to_path_buf());
        oc.rate_limits = unlimited();
        oc.max_concurrent_uploads = clients.max(8);
        let weed = if backend == "s3" {
            let weed = sakuga_testkit::weed::Weed::start(&mesh.env).await?;
            weed.configure(&mut oc.storage, "bench");
            Some(weed)
        } else {
            None
        };
        let organizer = sakuga_testkit::spawn_organizer(oc).await?;
        for (label, side, base) in &bases {
            let n = (settings.store_mib * 1024 * 1024 / base.len()).max(1);
            let mut run = run_size(&mesh, &organizer.addr_string(), (*side, base), n, clients).await?;
            let wall = run.wall.as_secs_f64();
            let mibps = run.bytes as f64 / wall / (1024.0 * 1024.0);
            let aps = run.artifacts as f64 / wall;
            let st = Stats::of(&mut run.latencies).ok_or_else(|| anyhow::anyhow!("no upload"))?;
            section.row(
                vec![
                    backend.to_owned(),
                    format!("{label} ({:.2} MiB)", base.len() as f64 / (1024.0 * 1024.0)),
                    run.artifacts.to_string(),
                    clients.to_string(),
                    format!("{wall:.2} s"),
                    format!("{mibps:.1}"),
                    format!("{aps:.1}"),
                    format!("{:.0} ms", st.p50_ms),
                    format!("{:.0} ms", st.p95_ms),
                ],
                json!({
                    "backend": backend, "payload_bytes": base.len(), "artifacts": run.artifacts,
                    "clients": clients, "wall_s": wall, "mib_per_s": mibps, "artifacts_per_s": aps,
                    "latency": st,
                }),
            );
        }
        organizer.stop().await?;
        drop(weed);
    }
    mesh.stop().await?;
    Ok(section)
}
