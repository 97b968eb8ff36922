//! A remote ComfyUI behind a TLS-terminating reverse proxy that wants a bearer token: the
//! replay server behind the testkit's proxy (its own fresh CA), the token in OpenBao, a
//! real job through the generator's comfyui backend. Also the refusals an operator meets
//! (unknown CA, missing or wrong token, a setting Vault lacks), none of which may show the
//! token.

use std::{
    collections::HashMap,
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::header::HeaderMap;
use sakuga_generator::{
    backend::{Backend, BackendError, JobInput, Sink},
    comfyui::{ComfyConfig, ComfyUi, HeaderSetting, ServerHeaders, http::Api, http::HttpError},
};
use sakuga_mesh::{metrics::Metrics, vault::Vault};
use sakuga_testkit::{
    TestEnv,
    comfy::{Pacing, ReplayComfy, fixtures_dir},
    tls_proxy::TlsProxy,
};
use tokio_util::sync::CancellationToken;

/// Everything written through `tracing` on this test's thread (the runtime is
/// current-thread, so the backend's socket task logs here too).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn capture(&self) -> tracing::subscriber::DefaultGuard {
        let logs = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(move || logs.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Remote {
    replay: ReplayComfy,
    proxy: TlsProxy,
    dir: tempfile::TempDir,
    token: String,
}

impl Remote {
    async fn start() -> Self {
        let replay = ReplayComfy::start(Pacing::Instant).await;
        let token = format!("tok-{}", uuid::Uuid::new_v4().simple());
        let proxy = TlsProxy::start(&replay.url(), &token).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("fake.json"), sakuga_testkit::comfy::FAKE_SAMPLER_TEMPLATE).unwrap();
        Self { replay, proxy, dir, token }
    }

    /// Settings for the proxy's URL, verified against `ca_file`.
    fn config(&self, ca_file: Option<std::path::PathBuf>) -> ComfyConfig {
        ComfyConfig {
            urls: vec![self.proxy.url()],
            ca_file,
            templates_dir: Some(self.dir.path().to_path_buf()),
            image_template: "fake".into(),
            video_template: "fake".into(),
            preview_metadata: false,
            connect_timeout: Duration::from_secs(2),
            lost_after: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            ..ComfyConfig::default()
        }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.proxy.write_ca(self.dir.path(), "proxy-ca.pem").unwrap()
    }

    /// `Authorization: Bearer <value>` for the proxy, given directly.
    fn bearer(&self, value: &str) -> ServerHeaders {
        let mut headers = ServerHeaders::default();
        let url = reqwest::Url::parse(&self.proxy.url()).unwrap();
        headers.insert(&url, "Authorization", &format!("Bearer {value}")).unwrap();
        headers
    }

    /// A bare HTTP client for the proxy with `config`'s TLS and no extra headers.
    fn api(&self, config: &ComfyConfig) -> Api {
        let url = reqwest::Url::parse(&self.proxy.url()).unwrap();
        let tls = config.client_tls().unwrap();
        Api::new(url, Duration::from_secs(5), 1 << 20, Metrics::new(), tls.as_ref(), HeaderMap::new())
            .unwrap()
    }
}

/// The recorded FakeSampler run's job (512×512, 8 steps).
fn job() -> JobInput {
    crate::comfyui::job(512, 8)
}

async fn run(backend: &dyn Backend) -> Result<Vec<sakuga_imaging::Artifact>, BackendError> {
    tokio::time::timeout(
        Duration::from_secs(30),
        backend.run(job(), Sink::discard(), CancellationToken::new()),
    )
    .await
    .unwrap()
}

fn unreachable_job(result: Result<Vec<sakuga_imaging::Artifact>, BackendError>) -> String {
    match result {
        Err(BackendError::Retryable(message)) => {
            assert!(message.contains("ComfyUI is not reachable"), "{message}");
            message
        }
        other => panic!("expected a retryable failure, got {other:?}"),
    }
}

#[tokio::test]
async fn https_with_the_configured_ca_and_a_token_from_vault_runs_a_job() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let env = TestEnv::new().await.unwrap();
    let remote = Remote::start().await;
    let secret = HashMap::from([("token", remote.token.clone())]);
    let vault_path = env.put_secret("comfyui/gpu-1", &secret).await.unwrap();
    let vault = Vault::connect(&env.vault_config()).await.unwrap();

    let mut comfyui = remote.config(Some(remote.ca_file()));
    comfyui.headers = vec![HeaderSetting {
        url: remote.proxy.url(),
        name: "Authorization".into(),
        vault_path,
        vault_key: "token".into(),
        prefix: "Bearer ".into(),
    }];
    let config = sakuga_generator::Config { backend: "comfyui".into(), comfyui, ..Default::default() };
    // The generator's own start-up path: headers read from Vault, then the backend.
    let backend = sakuga_generator::backend_for(&config, &Metrics::new(), &vault).await.unwrap();
    // Templates are checked over https before the first job.
    backend.warm_up(CancellationToken::new()).await.unwrap();
    let artifacts = run(backend.as_ref()).await.unwrap();

    assert_eq!(artifacts.len(), 1);
    let recorded = std::fs::read(fixtures_dir().join("07_fake_sampler_output.png")).unwrap();
    assert_eq!(artifacts[0].bytes, recorded, "the output came through the proxy intact");
    let seen = remote.proxy.requests();
    assert!(seen.iter().all(|r| r.authorized), "every request carried the token: {seen:?}");
    assert!(
        seen.iter().any(|r| r.upgrade && r.path.starts_with("/ws?clientId=")),
        "the socket's upgrade went through the proxy with the token: {seen:?}"
    );
    for (method, path) in
        [("GET", "/object_info/"), ("POST", "/prompt"), ("GET", "/history/"), ("GET", "/view")]
    {
        assert!(
            seen.iter().any(|r| r.method == method && r.path.starts_with(path)),
            "{method} {path}: {seen:?}"
        );
    }
    assert_eq!(remote.replay.count("POST", "/prompt"), 1, "ComfyUI behind the proxy got the prompt");

    assert!(!format!("{backend:?}").contains(&remote.token), "the backend's Debug shows the token");
    let logs = logs.text();
    assert!(logs.contains("ComfyUI socket open"), "logs are captured: {logs}");
    assert!(!logs.contains(&remote.token), "the token is in the logs:\n{logs}");
    env.cleanup().await;
}

#[tokio::test]
async fn without_the_ca_the_server_is_refused_as_an_unknown_issuer() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let remote = Remote::start().await;
    let other = TlsProxy::start(&remote.replay.url(), &remote.token).await.unwrap();
    let other_ca = other.write_ca(remote.dir.path(), "other-ca.pem").unwrap();
    // The system's roots (no ca_file), and a CA file of another CA.
    for ca_file in [None, Some(other_ca)] {
        let config = remote.config(ca_file.clone());
        match remote.api(&config).has_node("SaveImage").await {
            Err(HttpError::Unavailable(text)) => {
                assert!(text.contains("UnknownIssuer"), "{ca_file:?}: {text}");
            }
            other => panic!("{ca_file:?}: expected a refused certificate, got {other:?}"),
        }
        let backend = ComfyUi::with_metrics(config, Metrics::new(), &remote.bearer(&remote.token)).unwrap();
        unreachable_job(run(&backend).await);
    }
    // Why the job could not run is in the log: the socket's handshake failed on the issuer.
    let logs = logs.text();
    assert!(logs.contains("ComfyUI socket not open in time") && logs.contains("UnknownIssuer"), "{logs}");
    assert!(remote.proxy.failed_handshakes() >= 2, "the client aborted the handshakes");
    assert!(remote.proxy.requests().is_empty(), "nothing was sent: {:?}", remote.proxy.requests());
    assert!(remote.replay.requests().is_empty());
}

#[tokio::test]
async fn without_the_token_or_with_a_wrong_one_the_proxy_answers_401_and_the_value_is_never_shown() {
    let logs = Logs::default();
    let _guard = logs.capture();
    let remote = Remote::start().await;
    let config = remote.config(Some(remote.ca_file()));
    match remote.api(&config).has_node("SaveImage").await {
        Err(HttpError::Refused { status: 401, .. }) => {}
        other => panic!("expected 401, got {other:?}"),
    }
    let bare = ComfyUi::new(config.clone()).unwrap();
    unreachable_job(run(&bare).await);
    drop(bare);

    let wrong = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    let backend = ComfyUi::with_metrics(config, Metrics::new(), &remote.bearer(&wrong)).unwrap();
    let message = unreachable_job(run(&backend).await);
    assert!(!message.contains(&wrong));
    assert!(!format!("{backend:?}").contains(&wrong), "{backend:?}");
    let warm = backend.warm_up(CancellationToken::new()).await;
    assert!(warm.is_ok(), "an unreachable server is only logged at start-up: {warm:?}");

    let seen = remote.proxy.requests();
    assert!(seen.iter().all(|r| !r.authorized), "{seen:?}");
    assert!(seen.iter().any(|r| r.upgrade), "the socket's upgrade was refused too: {seen:?}");
    assert!(remote.replay.requests().is_empty(), "nothing reached ComfyUI");
    let logs = logs.text();
    assert!(logs.contains("401 Unauthorized"), "the refusal is in the log: {logs}");
    assert!(!logs.contains(&wrong) && !logs.contains(&remote.token), "a token is in the logs:\n{logs}");
}

#[tokio::test]
async fn a_header_vault_cannot_give_stops_start_up_naming_the_setting() {
    let env = TestEnv::new().await.unwrap();
    let remote = Remote::start().await;
    let vault = Vault::connect(&env.vault_config()).await.unwrap();
    // The token is there, under another key than the one configured.
    let secret = HashMap::from([("password", remote.token.clone())]);
    let vault_path = env.put_secret("comfyui/gpu-1", &secret).await.unwrap();
    let mut comfyui = remote.config(Some(remote.ca_file()));
    comfyui.headers = vec![HeaderSetting {
        url: remote.proxy.url(),
        name: "Authorization".into(),
        vault_path: vault_path.clone(),
        vault_key: "token".into(),
        prefix: "Bearer ".into(),
    }];
    let mut config = sakuga_generator::Config { backend: "comfyui".into(), comfyui, ..Default::default() };
    let err = sakuga_generator::backend_for(&config, &Metrics::new(), &vault).await.unwrap_err().to_string();
    assert!(err.contains("comfyui.headers.vault_key") && err.contains("\"token\""), "{err}");
    assert!(!err.contains(&remote.token), "{err}");

    config.comfyui.headers[0].vault_path = format!("{vault_path}-missing");
    let err = sakuga_generator::backend_for(&config, &Metrics::new(), &vault).await.unwrap_err().to_string();
    assert!(err.contains("comfyui.headers.vault_path"), "{err}");

    // Built without reading Vault, the backend refuses rather than run without the header.
    let err = ComfyUi::new(config.comfyui.clone()).unwrap_err().to_string();
    assert!(err.starts_with("comfyui.headers:") && err.contains("no value"), "{err}");
    env.cleanup().await;
}
