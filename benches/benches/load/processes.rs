//! `processes`: the four services as release binaries, one process each. Pipeline
//! throughput end to end with the benchmark backend, and each process's resident memory
//! idle and under that load.

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use sakuga_benches::Section;
use sakuga_mesh::tls::MeshTls;
use sakuga_testkit::{Spawned, TestEnv};
use serde_json::json;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    Settings,
    mesh::{small_job, unlimited, wait_succeeded},
};

struct Proc {
    name: String,
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    spawned: Instant,
}

impl Proc {
    fn rss_kib(&self, field: &str) -> u64 {
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
            })
            .unwrap_or(0)
    }
}

/// A metrics address on a port the system picks, so that no two processes collide.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A `Spawned` that only carries an address, for the testkit's config builders.
fn at(addr: SocketAddr) -> Spawned {
    let mut s = Spawned::unused();
    s.addr = addr;
    s
}

fn start(
    bin_dir: &Path,
    dir: &Path,
    name: &str,
    config: &impl serde::Serialize,
    addr: SocketAddr,
) -> anyhow::Result<Proc> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(config)?)?;
    let service = name.split('-').next().unwrap_or(name);
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(bin_dir.join(format!("sakuga-{service}")))
        .arg("--config")
        .arg(&path)
        .arg("serve")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| {
            anyhow::anyhow!("starting {}: {e}", bin_dir.join(format!("sakuga-{service}")).display())
        })?;
    Ok(Proc { name: name.to_owned(), child, addr, log: log_path, spawned: Instant::now() })
}

/// Waits until `p` reports SERVING and returns how long that took from its spawn.
async fn serving(operator: &MeshTls, p: &mut Proc) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        if let Some(status) = p.child.try_wait()? {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            anyhow::bail!(
                "{} exited during start-up ({status}); the end of its log:\n{}",
                p.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let mut health = HealthClient::new(operator.channel(&p.addr.to_string())?);
        if let Ok(r) = health.check(HealthCheckRequest { service: String::new() }).await
            && r.into_inner().status == ServingStatus::Serving as i32
        {
            return Ok(p.spawned.elapsed());
        }
        anyhow::ensure!(Instant::now() < deadline, "{} not SERVING within a minute", p.name);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stop(procs: &mut [Proc]) {
    for p in procs.iter().rev() {
        let _ =
            Command::new("kill").arg("-TERM").arg(p.child.id().to_string()).stderr(Stdio::null()).status();
    }
    for p in procs.iter_mut() {
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = p.child.kill();
        let _ = p.child.wait();
    }
}

pub async fn run(settings: &Settings) -> anyhow::Result<Vec<Section>> {
    let bin_dir = std::env::var("BENCH_BIN_DIR").map_or_else(
        |_| {
            PathBuf::from(std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into()))
                .join("release")
        },
        PathBuf::from,
    );
    let env = TestEnv::new().await?;
    let dir = tempfile::tempdir()?;
    let files = dir.path().join("files");
    let (a_addr, s_addr, o_addr) = (free_addr()?, free_addr()?, free_addr()?);

    let mut ac = sakuga_testkit::auth_config(&env);
    (ac.server.listen, ac.server.metrics_listen, ac.rate_limits) = (a_addr, Some(any_port()), unlimited());
    let auth = at(a_addr);
    let mut sc = crate::mesh::scheduler_config(&env, &auth);
    (sc.server.listen, sc.server.metrics_listen) = (s_addr, Some(any_port()));
    let mut oc = sakuga_testkit::organizer_config(&env, &auth, files.clone());
    (oc.server.listen, oc.server.metrics_listen, oc.rate_limits) = (o_addr, Some(any_port()), unlimited());

    let operator = env.identity("operator").await?;
    let mut procs = Vec::new();
    let mut startup = Vec::new();
    let result = async {
        for (name, cfg, addr) in [
            ("auth", toml::Value::try_from(&ac)?, a_addr),
            ("scheduler", toml::Value::try_from(&sc)?, s_addr),
            ("organizer", toml::Value::try_from(&oc)?, o_addr),
        ] {
            procs.push(start(&bin_dir, dir.path(), name, &cfg, addr)?);
            startup.push(serving(&operator, procs.last_mut().unwrap()).await?);
        }
        for g in 0..settings.pipeline_generators {
            let addr = free_addr()?;
            let mut gc = sakuga_testkit::generator_config(&env, &auth, &at(s_addr), &at(o_addr));
            (gc.server.listen, gc.server.metrics_listen) = (addr, Some(any_port()));
            gc.worker_id = format!("bench-generator-{g}");
            gc.backend = "benchmark".into();
            gc.slots = settings.pipeline_slots as u32;
            procs.push(start(&bin_dir, dir.path(), &format!("generator-{g}"), &gc, addr)?);
            startup.push(serving(&operator, procs.last_mut().unwrap()).await?);
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let idle: Vec<u64> = procs.iter().map(|p| p.rss_kib("VmRSS:")).collect();

        let token = sakuga_testkit::login(operator.channel(&a_addr.to_string())?, "admin", &env.admin_password).await?;
        let jobs = settings.pipeline_jobs;
        let next = Arc::new(AtomicUsize::new(0));
        let db = env.db().await?;
        // Peak resident memory, sampled every 50 ms while the load runs.
        let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let sampling = sampling.clone();
            tokio::spawn(async move {
                let mut peak = vec![0u64; pids.len()];
                while sampling.load(Ordering::SeqCst) {
                    for (i, pid) in pids.iter().enumerate() {
                        let rss = std::fs::read_to_string(format!("/proc/{pid}/status")).ok().and_then(|s| {
                            s.lines()
                                .find(|l| l.starts_with("VmRSS:"))
                                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
                        });
                        peak[i] = peak[i].max(rss.unwrap_or(0));
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                peak
            })
        };
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..settings.saturation_clients {
            let mut client = sakuga_proto::v1::job_service_client::JobServiceClient::with_interceptor(
                operator.channel(&s_addr.to_string())?,
                sakuga_testkit::Bearer::new(&token),
            );
            let next = next.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= jobs {
                        return Ok::<_, tonic::Status>(());
                    }
                    client.submit_job(small_job(format!("pipeline {i}"), "benchmark")).await?;
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        wait_succeeded(&db, jobs as i64, Duration::from_mins(5)).await?;
        let wall = start.elapsed();
        sampling.store(false, Ordering::SeqCst);
        let peak = sampler.await?;
        let row = db
            .query_one(
                "SELECT (SELECT count(*) FROM files)::bigint,
                        percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at)),
                        percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - created_at))
                   FROM jobs WHERE status = 'succeeded'",
                &[],
            )
            .await?;
        let (stored, p50, p99): (i64, f64, f64) = (row.get(0), row.get(1), row.get(2));
        anyhow::ensure!(stored == jobs as i64, "{stored} files stored for {jobs} jobs");
        Ok::<_, anyhow::Error>((idle, peak, wall, p50, p99))
    }
    .await;
    stop(&mut procs);
    let (idle, peak, wall, p50, p99) = result?;
    env.cleanup().await;

    let jobs = settings.pipeline_jobs;
    let rate = jobs as f64 / wall.as_secs_f64();
    let mut pipeline = Section::new(
        "pipeline",
        "Pipeline throughput end to end (services as processes, benchmark backend)",
        &format!(
            "auth, scheduler, organizer and {g} generators, each its own release-build process, \
             with real PostgreSQL, Redis, OpenBao and mTLS between all of them. The generators run \
             the **benchmark backend** (`backend = \"benchmark\"`: a 64×64 generated PNG at once; \
             never the default) with {s} slots each. {c} clients submit {jobs} jobs back to back; \
             a job counts when it has succeeded: assigned, generated, uploaded over the file \
             stream, checked (sha256, decode, size, not blank), stored with a thumbnail, recorded \
             and completed. Latency is the job's `finished_at - created_at` from the database.",
            g = settings.pipeline_generators,
            s = settings.pipeline_slots,
            c = settings.saturation_clients,
        ),
        &["jobs", "generators × slots", "wall", "jobs/s", "submit → succeeded p50", "p99"],
    );
    pipeline.row(
        vec![
            jobs.to_string(),
            format!("{} × {}", settings.pipeline_generators, settings.pipeline_slots),
            format!("{:.1} s", wall.as_secs_f64()),
            format!("{rate:.0}"),
            format!("{:.1} ms", p50 * 1000.0),
            format!("{:.1} ms", p99 * 1000.0),
        ],
        json!({"jobs": jobs, "generators": settings.pipeline_generators, "slots": settings.pipeline_slots,
               "wall_secs": wall.as_secs_f64(), "jobs_per_sec": rate, "latency_p50_ms": p50 * 1000.0, "latency_p99_ms": p99 * 1000.0}),
    );
    let mut rss = Section::new(
        "rss",
        "Start-up time and resident memory of each service process",
        "Start-up: from spawning the process to its first SERVING health answer (polled every \
         20 ms over mTLS): Vault login, secrets, a certificate issued by Vault's PKI, \
         PostgreSQL and Redis connected and migrations checked; a generator is SERVING once \
         attached to the scheduler. They start one after another. VmRSS from /proc: idle is \
         read 3 s after every service reports SERVING; under load is the largest value \
         sampled every 50 ms during the pipeline run above.",
        &["process", "start to SERVING", "idle RSS", "under load (peak RSS)"],
    );
    let names = ["auth", "scheduler", "organizer"]
        .into_iter()
        .map(str::to_owned)
        .chain((0..settings.pipeline_generators).map(|g| format!("generator-{g}")));
    for (i, name) in names.enumerate() {
        let mib = |k: u64| k as f64 / 1024.0;
        let up = startup[i].as_secs_f64() * 1000.0;
        rss.row(
            vec![
                name.clone(),
                format!("{up:.0} ms"),
                format!("{:.1} MiB", mib(idle[i])),
                format!("{:.1} MiB", mib(peak[i])),
            ],
            json!({"process": name, "startup_ms": up, "idle_mib": mib(idle[i]), "load_peak_mib": mib(peak[i])}),
        );
    }
    Ok(vec![pipeline, rss])
}
