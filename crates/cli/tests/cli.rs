//! The `sakuga` binary against the four services (in-process, real mTLS, OpenBao,
//! PostgreSQL, Redis): profiles, login and refresh, submit with a live progress bar, JSON
//! output, downloads, API keys and the exit codes scripts rely on.

#![allow(clippy::unwrap_used)]

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use sakuga_testkit::{Spawned, TestEnv};
use serde_json::Value;

struct Stack {
    env: TestEnv,
    services: Vec<Spawned>,
    auth: String,
    scheduler: String,
    organizer: String,
    config: tempfile::TempDir,
}

async fn stack() -> Stack {
    sakuga_testkit::init_logging();
    let env = TestEnv::new().await.unwrap();
    let auth = sakuga_testkit::spawn_auth(sakuga_testkit::auth_config(&env)).await.unwrap();
    let scheduler =
        sakuga_testkit::spawn_scheduler(sakuga_testkit::scheduler_config(&env, &auth)).await.unwrap();
    let organizer = sakuga_testkit::spawn_organizer(sakuga_testkit::organizer_config(
        &env,
        &auth,
        env.dir.path().join("files"),
    ))
    .await
    .unwrap();
    let generator = sakuga_testkit::spawn_generator(sakuga_testkit::generator_config(
        &env, &auth, &scheduler, &organizer,
    ))
    .await
    .unwrap();
    let (a, s, o) = (auth.addr_string(), scheduler.addr_string(), organizer.addr_string());
    Stack {
        env,
        services: vec![generator, organizer, scheduler, auth],
        auth: a,
        scheduler: s,
        organizer: o,
        config: tempfile::tempdir().unwrap(),
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `sakuga args…` with `stdin`, in the stack's configuration folder.
async fn sakuga(stack: &Stack, args: &[&str], stdin: &str) -> Run {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let (dir, stdin) = (stack.config.path().to_path_buf(), stdin.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sakuga"))
            .args(&args)
            .env("SAKUGA_CONFIG_DIR", &dir)
            .env_remove("SAKUGA_API_KEY")
            .env_remove("SAKUGA_PROFILE")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    })
    .await
    .unwrap()
}

fn ok(r: &Run) {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
}

async fn write_certs(env: &TestEnv, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    // A person's client certificate, from the client-only role.
    let cert = env
        .issue_with_role(
            sakuga_mesh::config::USER_PKI_ROLE,
            "operator.user.sakuga",
            &[],
            &sakuga_mesh::identity::person_spiffe_id("operator"),
        )
        .await
        .unwrap();
    let paths = (dir.join("ca.pem"), dir.join("operator.pem"), dir.join("operator.key"));
    std::fs::write(&paths.0, &cert.ca_pem).unwrap();
    std::fs::write(&paths.1, &cert.chain_pem).unwrap();
    std::fs::write(&paths.2, &cert.key_pem).unwrap();
    (paths.0, paths.1, paths.2)
}

/// Writes a person's certificate into `dir` and adds the profile `test` for the stack.
async fn add_profile(st: &Stack, dir: &Path) {
    let (ca, cert, key) = write_certs(&st.env, dir).await;
    let (ca, cert, key) = (ca.to_string_lossy(), cert.to_string_lossy(), key.to_string_lossy());
    let args = [
        "profile",
        "add",
        "test",
        "--auth",
        &st.auth,
        "--scheduler",
        &st.scheduler,
        "--organizer",
        &st.organizer,
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    ok(&sakuga(st, &args, "").await);
}

/// A batch downloads into a folder that does not exist yet, written as `out/` or `out`:
/// one file per image, none overwriting another.
async fn batch_downloads_into_new_folders(st: &Stack, out: &Path) {
    for folder in ["batch/", "more/batch"] {
        let folder = out.join(folder);
        let r = sakuga(
            st,
            &[
                "submit",
                "four paper lanterns",
                "--width",
                "64",
                "--height",
                "64",
                "--steps",
                "2",
                "--batch",
                "4",
                "--download",
                &folder.to_string_lossy(),
            ],
            "",
        )
        .await;
        ok(&r);
        let saved: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(saved.len(), 4, "{saved:?}\n{}", r.stderr);
        for path in saved {
            sakuga_imaging::inspect_png(&std::fs::read(&path).unwrap(), sakuga_imaging::Limits::default())
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_submits_with_a_live_bar_lists_downloads_and_scripts_get_stable_exit_codes() {
    let st = stack().await;
    let certs = tempfile::tempdir().unwrap();

    // Nothing configured: a usage error that says what to do.
    let r = sakuga(&st, &["jobs", "list"], "").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("sakuga profile import-dev"), "{}", r.stderr);

    add_profile(&st, certs.path()).await;

    // Not logged in: exit 3 with the fix.
    let r = sakuga(&st, &["jobs", "list"], "").await;
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("run `sakuga login`"), "{}", r.stderr);
    let r = sakuga(&st, &["login", "-u", "admin", "--password-stdin"], "wrong password\n").await;
    assert_eq!(r.code, 3, "{}", r.stderr);

    ok(&sakuga(&st, &["login", "-u", "admin", "--password-stdin"], &format!("{}\n", st.env.admin_password))
        .await);
    let tokens = st.config.path().join("tokens/test.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let alice_password = "alice-has-a-long-password"; // secret-scan: allow (test fixture)
    ok(&sakuga(&st, &["admin", "users", "create", "alice", "--password-stdin"], alice_password).await);
    ok(&sakuga(&st, &["login", "-u", "alice", "--password-stdin"], alice_password).await);

    // Submit and watch: a frame per step, in order, then the file id. The image is large
    // enough that its steps take longer than opening the watch after the submit, also on a
    // machine busy with other tests (at 64 px a loaded run saw the job end first).
    let r = sakuga(
        &st,
        &[
            "submit",
            "a lantern festival by the river",
            "--width",
            "512",
            "--height",
            "512",
            "--steps",
            "6",
            "--seed",
            "3",
            "--watch",
        ],
        "",
    )
    .await;
    ok(&r);
    // Every frame of the bar, by step. The label of a frame may be the job's status instead
    // of its stage when a status event carries the step (a watcher's re-read of the row can
    // land between the row's first progress write and that progress event), so frames are
    // told apart by their step alone: each step once, in order.
    let steps: Vec<String> = r
        .stderr
        .lines()
        .filter(|l| l.contains('['))
        .filter_map(|l| l.split_whitespace().find(|w| w.ends_with("/6")).map(str::to_owned))
        .filter(|s| s != "0/6")
        .collect();
    assert_eq!(
        steps,
        ["1/6", "2/6", "3/6", "4/6", "5/6", "6/6"],
        "the bar advances step by step:\n{}",
        r.stderr
    );
    assert!(r.stderr.contains("succeeded"), "{}", r.stderr);
    let file_id = r.stdout.trim().to_owned();
    uuid::Uuid::parse_str(&file_id).unwrap();

    // Stable JSON for scripts.
    let r = sakuga(&st, &["jobs", "list", "--json"], "").await;
    ok(&r);
    let jobs: Value = serde_json::from_str(&r.stdout).unwrap();
    let job = &jobs[0];
    assert_eq!(job["status"], "succeeded");
    assert_eq!(job["file_ids"][0], file_id.as_str());
    assert_eq!(job["progress"]["step"], 6);
    for key in
        ["id", "kind", "prompt", "composed_prompt", "width", "height", "steps", "seed", "created", "finished"]
    {
        assert!(job.get(key).is_some(), "jobs list --json has {key}: {job}");
    }
    let r = sakuga(&st, &["jobs", "list"], "").await;
    ok(&r);
    assert!(r.stdout.starts_with("ID"), "a table for people: {}", r.stdout);

    // Download, checked against the sha256.
    let out = tempfile::tempdir().unwrap();
    let r = sakuga(&st, &["files", "download", &file_id, "--out", &out.path().to_string_lossy()], "").await;
    ok(&r);
    let saved = std::fs::read(r.stdout.trim()).unwrap();
    let found = sakuga_imaging::inspect_png(&saved, sakuga_imaging::Limits::default()).unwrap();
    assert_eq!(found.text_value("prompt"), Some("a lantern festival by the river"));

    batch_downloads_into_new_folders(&st, out.path()).await;

    // Exit codes: not found 4, refused input 2, a canceled job 5.
    let r = sakuga(&st, &["jobs", "get", &uuid::Uuid::now_v7().to_string()], "").await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    let r = sakuga(&st, &["submit", "odd size", "--width", "65"], "").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("spec.width"), "{}", r.stderr);
    let r = sakuga(&st, &["submit", "waits for a comfyui worker", "--backend", "comfyui"], "").await;
    ok(&r);
    let queued = r.stdout.trim().to_owned();
    ok(&sakuga(&st, &["jobs", "cancel", &queued], "").await);
    let r = sakuga(&st, &["jobs", "watch", &queued], "").await;
    assert_eq!(r.code, 5, "{}", r.stderr);
    assert!(r.stderr.contains("canceled"), "{}", r.stderr);

    // An expired access token is refreshed on the next call.
    let mut stored: Value = serde_json::from_str(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
    stored["access_expires"] = 0.into();
    stored["access_token"] = "expired".into();
    std::fs::write(&tokens, stored.to_string()).unwrap();
    ok(&sakuga(&st, &["jobs", "list"], "").await);
    let refreshed: Value = serde_json::from_str(&std::fs::read_to_string(&tokens).unwrap()).unwrap();
    assert_ne!(refreshed["access_token"], "expired");

    // API keys for scripts; after logout only the key works.
    let r = sakuga(&st, &["admin", "keys", "create", "ci", "--json"], "").await;
    ok(&r);
    let secret = serde_json::from_str::<Value>(&r.stdout).unwrap()["secret"].as_str().unwrap().to_owned();
    ok(&sakuga(&st, &["logout"], "").await);
    assert!(!tokens.exists());
    assert_eq!(sakuga(&st, &["jobs", "list"], "").await.code, 3);
    // Never on the command line: refused as a usage error.
    let r = sakuga(&st, &["jobs", "list", "--api-key", &secret], "").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--api-key-file"), "{}", r.stderr);
    let key_file = st.config.path().join("ci.key");
    std::fs::write(&key_file, format!("{secret}\n")).unwrap();
    ok(&sakuga(&st, &["jobs", "list", "--api-key-file", key_file.to_str().unwrap()], "").await);

    for s in st.services {
        s.stop().await.unwrap();
    }
    st.env.cleanup().await;
}

/// An HTTP endpoint on loopback that answers every request 204 and counts them.
fn receiver() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{BufRead as _, Read as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n");
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_registered_tested_listed_rotated_and_deleted_from_the_command_line() {
    let st = stack().await;
    let certs = tempfile::tempdir().unwrap();
    add_profile(&st, certs.path()).await;
    ok(&sakuga(&st, &["login", "-u", "admin", "--password-stdin"], &format!("{}\n", st.env.admin_password))
        .await);
    let (url, seen) = receiver();

    let r =
        sakuga(&st, &["webhooks", "create", "--url", &url, "--event", "job.succeeded", "--json"], "").await;
    ok(&r);
    let created: Value = serde_json::from_str(&r.stdout).unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{}", r.stdout);
    let r = sakuga(&st, &["webhooks", "create", "--url", &url, "--event", "job.done"], "").await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("events"), "{}", r.stderr);

    ok(&sakuga(&st, &["webhooks", "test", &id], "").await);
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1);

    let args =
        ["submit", "a paper crane", "--width", "64", "--height", "64", "--steps", "2", "--webhook", &id];
    ok(&sakuga(&st, &[&args[..], &["--watch"]].concat(), "").await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = sakuga(&st, &["webhooks", "deliveries", "--webhook", &id, "--json"], "").await;
        ok(&r);
        let list: Value = serde_json::from_str(&r.stdout).unwrap();
        if list.as_array().unwrap().iter().any(|d| d["state"] == "delivered" && d["event"] == "job.succeeded")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never delivered: {}", r.stdout);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }

    // For people: the new secret on the last line, and a note that it is shown once.
    let r = sakuga(&st, &["webhooks", "rotate-secret", &id, "--overlap", "1h"], "").await;
    ok(&r);
    let rotated = r.stdout.lines().last().unwrap().strip_prefix("secret: ").unwrap();
    assert!(rotated.starts_with("whsec_") && rotated != secret, "{}", r.stdout);
    assert!(r.stderr.contains("only"), "the once-only note: {}", r.stderr);
    let r = sakuga(&st, &["webhooks", "get", &id, "--json"], "").await;
    ok(&r);
    let after: Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(!after["previous_secret_expires"].is_null() && after.get("secret").is_none(), "{}", r.stdout);

    ok(&sakuga(&st, &["webhooks", "delete", &id], "").await);
    let r = sakuga(&st, &["webhooks", "get", &id], "").await;
    assert_eq!(r.code, 4, "{}", r.stderr);
    for s in st.services {
        s.stop().await.unwrap();
    }
    st.env.cleanup().await;
}
