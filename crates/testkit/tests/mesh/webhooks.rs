//! Webhooks end to end: a receiver on loopback gets signed job events from the outbox,
//! verified with the Standard Webhooks reference library; deliveries survive a receiver
//! that is down or failing and a scheduler killed mid-delivery; private targets are refused
//! unless allowlisted; endpoints are owner-scoped, audited, and disabled when they keep
//! failing.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State as AxState, http::HeaderMap, routing::post};
use sakuga_proto::v1::{
    self as pb, CancelJobRequest, DeliveryState, ListDeliveriesRequest,
    webhook_service_client::WebhookServiceClient,
};
use sakuga_testkit::Authed;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::common::{Mesh, image_request};

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Vec<u8>,
    /// Answered 2xx.
    accepted: bool,
}

impl Received {
    fn id(&self) -> String {
        self.headers["webhook-id"].to_str().unwrap().to_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// (event, job id).
    fn event(&self) -> (String, String) {
        let v = self.json();
        (v["type"].as_str().unwrap().to_owned(), v["data"]["job"]["id"].as_str().unwrap().to_owned())
    }
}

#[derive(Debug, Default)]
struct Behaviour {
    seen: Vec<Received>,
    /// Of every ten requests, this many are answered 500 (after being recorded).
    fail_per_ten: usize,
    /// Every request is answered 500.
    fail_all: bool,
    /// Each request is held this long before the answer.
    delay: Duration,
}

/// An HTTP receiver on loopback that records every request.
struct Receiver {
    addr: SocketAddr,
    shared: Arc<Mutex<Behaviour>>,
    server: Option<JoinHandle<()>>,
}

async fn record(
    AxState(shared): AxState<Arc<Mutex<Behaviour>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::http::StatusCode {
    let (accepted, delay) = {
        let mut b = shared.lock().unwrap();
        let n = b.seen.len();
        let accepted = !b.fail_all && n % 10 >= b.fail_per_ten;
        b.seen.push(Received { headers, body: body.to_vec(), accepted });
        (accepted, b.delay)
    };
    tokio::time::sleep(delay).await;
    if accepted { axum::http::StatusCode::NO_CONTENT } else { axum::http::StatusCode::INTERNAL_SERVER_ERROR }
}

impl Receiver {
    async fn start() -> Self {
        // A port below the ephemeral range, so no outgoing connection holds it while the
        // receiver is down and it can listen there again.
        let [port] = sakuga_testkit::ports::free_ports::<1>().unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let listener = TcpListener::bind(addr).await.unwrap();
        let mut r = Self { addr, shared: Arc::new(Mutex::new(Behaviour::default())), server: None };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let app = Router::new().route("/hook", post(record)).with_state(self.shared.clone());
        self.server = Some(tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        }));
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Stops listening: connections are refused until [`Receiver::up`].
    async fn down(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
            let _ = s.await;
        }
    }

    async fn up(&mut self) {
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.shared.lock().unwrap());
    }

    fn seen(&self) -> Vec<Received> {
        self.shared.lock().unwrap().seen.clone()
    }

    /// Waits (up to `limit`) until `done` holds for what was received.
    async fn wait_for(
        &self,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let seen = self.seen();
            if done(&seen) {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}; got {} requests",
                seen.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The distinct (event, job) pairs accepted.
fn accepted(seen: &[Received]) -> HashSet<(String, String)> {
    seen.iter().filter(|r| r.accepted).map(Received::event).collect()
}

fn webhooks(mesh: &Mesh, token: &str) -> WebhookServiceClient<Authed> {
    WebhookServiceClient::new(mesh.authed(&mesh.scheduler.addr_string(), token))
}

async fn create(
    mesh: &Mesh,
    token: &str,
    url: &str,
    events: &[&str],
    adjust: impl FnOnce(&mut pb::CreateWebhookRequest),
) -> Result<pb::CreateWebhookResponse, tonic::Status> {
    let mut req = pb::CreateWebhookRequest {
        url: url.to_owned(),
        events: events.iter().map(|e| (*e).to_owned()).collect(),
        ..Default::default()
    };
    adjust(&mut req);
    webhooks(mesh, token).create_webhook(req).await.map(tonic::Response::into_inner)
}

/// Submits `n` one-step jobs; returns their ids.
async fn submit(mesh: &Mesh, token: &str, n: usize) -> Vec<String> {
    let mut jobs = mesh.jobs(token);
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let job = jobs
            .submit_job(image_request(&format!("webhook job {i}"), 1))
            .await
            .unwrap()
            .into_inner()
            .job
            .unwrap();
        ids.push(job.id);
    }
    ids
}

fn verify(secret: &str, r: &Received) {
    let wh = standardwebhooks::Webhook::new(secret).unwrap();
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, http::HeaderValue::from_bytes(r.headers[name].as_bytes()).unwrap());
    }
    wh.verify(&r.body, &headers).unwrap_or_else(|e| panic!("signature of {} does not verify: {e}", r.id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_job_sends_one_signed_job_succeeded_that_the_reference_library_verifies() {
    let mut mesh = Mesh::without_generator().await;
    mesh.attach_generator().await;
    let receiver = Receiver::start().await;
    let me = mesh.person("hook-owner").await;
    let created = create(&mesh, &me.token, &receiver.url(), &["job.succeeded"], |_| {}).await.unwrap();
    assert!(created.secret.starts_with("whsec_"), "{}", created.secret);
    let ids = submit(&mesh, &me.token, 3).await;
    receiver.wait_for(Duration::from_mins(1), "three job.succeeded", |s| s.len() >= 3).await;
    for id in &ids {
        mesh.finished(&me.token, id).await;
    }
    // Nothing else is on its way: every delivery of the endpoint is delivered.
    let deliveries = webhooks(&mesh, &me.token)
        .list_deliveries(ListDeliveriesRequest {
            webhook_id: created.webhook.as_ref().unwrap().id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(deliveries.len(), 3, "{deliveries:?}");
    assert!(deliveries.iter().all(|d| d.state == i32::from(DeliveryState::Delivered) && d.attempts == 1));
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3, "one request per job, no more");
    let mut jobs_seen = BTreeMap::new();
    for r in &seen {
        verify(&created.secret, r);
        let v = r.json();
        assert_eq!(v["type"], "job.succeeded");
        let job = &v["data"]["job"];
        assert_eq!(job["status"], "JOB_STATUS_SUCCEEDED", "{job}");
        assert_eq!(job["ownerId"], me.id.as_str());
        assert!(!job["fileIds"].as_array().unwrap().is_empty(), "{job}");
        assert!(job.get("leaseToken").is_none() && !r.body.windows(5).any(|w| w == b"/tmp/"), "{job}");
        assert!(deliveries.iter().any(|d| d.message_id == r.id()));
        *jobs_seen.entry(job["id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        jobs_seen.keys().cloned().collect::<HashSet<_>>(),
        ids.iter().cloned().collect::<HashSet<_>>()
    );

    // Rotation: during the overlap both secrets sign, so receivers holding either verify.
    let rotated = webhooks(&mesh, &me.token)
        .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
            webhook_id: created.webhook.as_ref().unwrap().id.clone(),
            overlap_seconds: Some(3600),
        })
        .await
        .unwrap()
        .into_inner();
    assert_ne!(rotated.secret, created.secret);
    assert!(rotated.webhook.unwrap().previous_secret_expire_time.is_some());
    submit(&mesh, &me.token, 1).await;
    let seen = receiver.wait_for(Duration::from_mins(1), "the fourth delivery", |s| s.len() >= 4).await;
    let last = &seen[3];
    assert_eq!(last.headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);
    verify(&rotated.secret, last);
    verify(&created.secret, last);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_receiver_down_for_30s_gets_every_event_afterwards_in_each_jobs_order() {
    let mut mesh = Mesh::with_scheduler_config(|c| {
        c.webhooks.backoff_initial = Duration::from_millis(500);
        c.webhooks.backoff_max = Duration::from_secs(3);
    })
    .await;
    mesh.attach_generator().await;
    let mut receiver = Receiver::start().await;
    let me = mesh.person("down-owner").await;
    create(&mesh, &me.token, &receiver.url(), &["job.started", "job.succeeded"], |_| {}).await.unwrap();
    receiver.down().await;
    let ids = submit(&mesh, &me.token, 5).await;
    for id in &ids {
        mesh.finished(&me.token, id).await;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(receiver.seen().is_empty());
    let db = mesh.env.db().await.unwrap();
    let failed_attempts: i64 = db
        .query_one("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending' AND attempts > 0", &[])
        .await
        .unwrap()
        .get(0);
    assert!(failed_attempts > 0, "deliveries were tried while the receiver was down");
    receiver.up().await;
    let want: HashSet<(String, String)> = ids
        .iter()
        .flat_map(|id| [("job.started".to_owned(), id.clone()), ("job.succeeded".to_owned(), id.clone())])
        .collect();
    let seen = receiver
        .wait_for(Duration::from_mins(1), "every event after the receiver came back", |s| accepted(s) == want)
        .await;
    // Per job: its started arrives before its succeeded (nothing of a job is sent while an
    // earlier event of it is pending).
    for id in &ids {
        let order: Vec<String> =
            seen.iter().map(Received::event).filter(|(_, j)| j == id).map(|(e, _)| e).collect();
        assert_eq!(order.first().map(String::as_str), Some("job.started"), "{id}: {order:?}");
        let last_started = order.iter().rposition(|e| e == "job.started").unwrap();
        let first_succeeded = order.iter().position(|e| e == "job.succeeded").unwrap();
        assert!(last_started < first_succeeded, "{id}: {order:?}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduler_killed_mid_delivery_loses_none() {
    let mut mesh = Mesh::with_scheduler_config(|c| {
        c.webhooks.lease_grace = Duration::from_secs(1);
        c.webhooks.backoff_initial = Duration::from_millis(200);
        c.webhooks.backoff_max = Duration::from_secs(1);
    })
    .await;
    mesh.attach_generator().await;
    let receiver = Receiver::start().await;
    // Every answer comes after the endpoint's timeout: the first attempts are in flight
    // (then failed) when the scheduler is killed.
    receiver.set(|b| b.delay = Duration::from_millis(1500));
    let me = mesh.person("kill-owner").await;
    create(&mesh, &me.token, &receiver.url(), &["job.succeeded"], |r| r.timeout_ms = 1000).await.unwrap();
    let ids = submit(&mesh, &me.token, 4).await;
    for id in &ids {
        mesh.finished(&me.token, id).await;
    }
    receiver.wait_for(Duration::from_secs(30), "a first attempt", |s| !s.is_empty()).await;
    // Killed, not stopped: nothing of it runs after this (no hand-back of its attempts).
    let mut cfg = sakuga_testkit::scheduler_config(&mesh.env, &mesh.auth);
    cfg.webhooks.lease_grace = Duration::from_secs(1);
    cfg.webhooks.backoff_initial = Duration::from_millis(200);
    cfg.webhooks.backoff_max = Duration::from_secs(1);
    mesh.scheduler.task.abort();
    let _ = (&mut mesh.scheduler.task).await;
    let db = mesh.env.db().await.unwrap();
    let in_flight: i64 = db
        .query_one("SELECT count(*) FROM webhook_deliveries WHERE in_flight_until IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    receiver.set(|b| b.delay = Duration::ZERO);
    let replacement = sakuga_testkit::spawn_scheduler(cfg).await.unwrap();
    let want: HashSet<(String, String)> =
        ids.iter().map(|id| ("job.succeeded".to_owned(), id.clone())).collect();
    let seen = receiver
        .wait_for(Duration::from_mins(1), "every job's event after the kill", |s| accepted(s) == want)
        .await;
    assert!(in_flight > 0, "the kill came while no attempt was in flight; the test proves nothing");
    // Every delivery ends delivered, and repeats of one carry one webhook-id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending: i64 = db
            .query_one("SELECT count(*) FROM webhook_deliveries WHERE state <> 'delivered'", &[])
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{pending} deliveries never delivered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut ids_per_event: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for r in &seen {
        ids_per_event.entry(r.event()).or_default().insert(r.id());
    }
    assert!(ids_per_event.values().all(|ids| ids.len() == 1), "{ids_per_event:?}");
    replacement.stop().await.unwrap();
    for s in mesh.generator.into_iter().chain([mesh.organizer, mesh.auth]) {
        s.stop().await.unwrap();
    }
    mesh.env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_jobs_through_a_receiver_failing_30_percent_all_arrive_with_stable_ids() {
    let mut mesh = Mesh::with_scheduler_config(|c| {
        c.max_active_jobs_per_user = 1000;
        c.webhooks.backoff_initial = Duration::from_millis(200);
        c.webhooks.backoff_max = Duration::from_secs(2);
    })
    .await;
    mesh.attach_generator_with(|g| g.slots = 8).await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.fail_per_ten = 3);
    let me = mesh.person("busy-owner").await;
    let hook =
        create(&mesh, &me.token, &receiver.url(), &["job.succeeded", "job.failed", "job.canceled"], |r| {
            r.max_concurrency = 16;
        })
        .await
        .unwrap();
    let ids = submit(&mesh, &me.token, 500).await;
    // A fifth are canceled, wherever they are by then: their terminal event is job.canceled
    // (or job.succeeded if the cancel came too late).
    let mut jobs = mesh.jobs(&me.token);
    for id in ids.iter().step_by(5) {
        let _ = jobs.cancel_job(CancelJobRequest { job_id: id.clone() }).await;
    }
    let all: HashSet<String> = ids.iter().cloned().collect();
    let seen = receiver
        .wait_for(Duration::from_mins(4), "a terminal event of every job", |s| {
            accepted(s).into_iter().map(|(_, j)| j).collect::<HashSet<_>>() == all
        })
        .await;
    let failed = seen.iter().filter(|r| !r.accepted).count();
    assert!(failed * 10 >= seen.len() * 2, "the receiver failed {failed} of {}", seen.len());
    let mut ids_per_event: HashMap<(String, String), HashSet<String>> = HashMap::new();
    for r in &seen {
        verify(&hook.secret, r);
        ids_per_event.entry(r.event()).or_default().insert(r.id());
    }
    assert!(seen.len() > ids_per_event.len(), "no request was repeated; the failures were not retried");
    let mixed: Vec<_> = ids_per_event.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(mixed.is_empty(), "repeats of one event carried different webhook-ids: {mixed:?}");
    // One terminal event per job.
    let mut per_job: HashMap<String, usize> = HashMap::new();
    for (_, job) in ids_per_event.keys() {
        *per_job.entry(job.clone()).or_default() += 1;
    }
    assert!(per_job.values().all(|n| *n == 1), "a job had two terminal events");
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_targets_need_the_allowlist_and_endpoints_are_owned_audited_and_disabled_when_failing() {
    let strict = Mesh::with_scheduler_config(|c| {
        c.webhooks.allow_networks.clear();
        c.webhooks.allow_http = false;
    })
    .await;
    let me = strict.person("strict-owner").await;
    for (url, words) in [
        ("https://127.0.0.1:9/hook", "loopback"),
        ("https://10.0.0.7/hook", "private"),
        ("https://169.254.169.254/latest", "link-local"),
        ("https://localhost:9/hook", "loopback"),
        ("http://93.184.215.14/hook", "https://"),
    ] {
        let e = create(&strict, &me.token, url, &["job.succeeded"], |_| {}).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{url}: {e:?}");
        assert!(e.message().starts_with("url: ") && e.message().contains(words), "{url}: {}", e.message());
    }
    strict.stop().await;

    // The default test mesh allowlists loopback, as the local stack does.
    let mesh = Mesh::with_scheduler_config(|c| {
        c.webhooks.disable_after_failures = 3;
        c.webhooks.disable_after = Duration::ZERO;
        c.webhooks.backoff_initial = Duration::from_millis(100);
        c.webhooks.backoff_max = Duration::from_millis(300);
    })
    .await;
    let receiver = Receiver::start().await;
    receiver.set(|b| b.fail_all = true);
    let owner = mesh.person("allowed-owner").await;
    let other = mesh.person("other-owner").await;
    let hook = create(&mesh, &owner.token, &receiver.url(), &["job.canceled"], |_| {})
        .await
        .unwrap()
        .webhook
        .unwrap();
    let get = |token: &str| {
        let mut c = webhooks(&mesh, token);
        let id = hook.id.clone();
        async move { c.get_webhook(pb::GetWebhookRequest { webhook_id: id }).await }
    };
    assert_eq!(get(&other.token).await.unwrap_err().code(), tonic::Code::NotFound);
    assert!(get(&mesh.admin_token).await.is_ok());
    // Another owner's endpoint cannot be named by a job.
    let mut named = image_request("named", 1);
    named.webhook_id = hook.id.clone();
    let e = mesh.jobs(&other.token).submit_job(named.clone()).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    // TestWebhook reports the endpoint's answer.
    let t = webhooks(&mesh, &owner.token)
        .test_webhook(pb::TestWebhookRequest { webhook_id: hook.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((t.status_code, t.error.as_str()), (500, "HTTP 500 Internal Server Error"));
    // A failing endpoint is disabled after three failed attempts in a row, and says why.
    let job = mesh
        .jobs(&owner.token)
        .submit_job(image_request("to cancel", 1))
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    mesh.jobs(&owner.token).cancel_job(CancelJobRequest { job_id: job.id.clone() }).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let disabled = loop {
        let h = get(&owner.token).await.unwrap().into_inner().webhook.unwrap();
        if !h.enabled {
            break h;
        }
        assert!(tokio::time::Instant::now() < deadline, "the failing endpoint was never disabled: {h:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(disabled.disabled_reason.contains("3 failed attempts in a row"), "{}", disabled.disabled_reason);
    assert!(disabled.disabled_reason.contains("HTTP 500"), "{}", disabled.disabled_reason);
    // Enabling it again clears the reason; the pending delivery then goes out.
    receiver.set(|b| b.fail_all = false);
    let enabled = webhooks(&mesh, &owner.token)
        .update_webhook(pb::UpdateWebhookRequest {
            webhook_id: hook.id.clone(),
            enabled: Some(true),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .webhook
        .unwrap();
    assert!(enabled.enabled && enabled.disabled_reason.is_empty() && enabled.consecutive_failures == 0);
    receiver
        .wait_for(Duration::from_secs(30), "the canceled event after re-enabling", |s| {
            s.iter().any(|r| r.accepted)
        })
        .await;
    // RedeliverWebhook sends the delivered event again under the same webhook-id.
    let delivery = webhooks(&mesh, &owner.token)
        .list_deliveries(ListDeliveriesRequest { job_id: job.id.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .deliveries
        .remove(0);
    let again = webhooks(&mesh, &owner.token)
        .redeliver_webhook(pb::RedeliverWebhookRequest { delivery_id: delivery.id.clone() })
        .await
        .unwrap()
        .into_inner()
        .delivery
        .unwrap();
    assert_eq!(again.state, i32::from(DeliveryState::Pending));
    let seen = receiver
        .wait_for(Duration::from_secs(30), "the redelivery", |s| s.iter().filter(|r| r.accepted).count() >= 2)
        .await;
    let accepted_ids: Vec<String> = seen.iter().filter(|r| r.accepted).map(Received::id).collect();
    assert_eq!(accepted_ids, [delivery.message_id.clone(), delivery.message_id.clone()]);
    // Every change is audited.
    webhooks(&mesh, &owner.token)
        .delete_webhook(pb::DeleteWebhookRequest { webhook_id: hook.id.clone() })
        .await
        .unwrap();
    let db = mesh.env.db().await.unwrap();
    let actions: Vec<String> = db
        .query(
            "SELECT action FROM audit_events WHERE target = $1 ORDER BY id",
            &[&format!("webhook:{}", hook.id)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for action in [
        "WebhookService.CreateWebhook",
        "WebhookService.TestWebhook",
        "WebhookService.UpdateWebhook",
        "WebhookService.DeleteWebhook",
    ] {
        assert!(actions.iter().any(|a| a == action), "{action} not audited: {actions:?}");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_per_user_are_capped_and_a_deleted_one_frees_its_place() {
    let mesh = Mesh::with_scheduler_config(|c| c.webhooks.max_endpoints_per_user = 2).await;
    let receiver = Receiver::start().await;
    let me = mesh.person("many-hooks").await;
    let other = mesh.person("other-hooks").await;
    let first = create(&mesh, &me.token, &receiver.url(), &["job.succeeded"], |_| {}).await.unwrap();
    create(&mesh, &me.token, &receiver.url(), &["job.failed"], |_| {}).await.unwrap();
    let e = create(&mesh, &me.token, &receiver.url(), &["job.canceled"], |_| {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("2 webhook endpoints"), "{}", e.message());
    // The cap is per user.
    create(&mesh, &other.token, &receiver.url(), &["job.succeeded"], |_| {}).await.unwrap();
    webhooks(&mesh, &me.token)
        .delete_webhook(pb::DeleteWebhookRequest { webhook_id: first.webhook.unwrap().id })
        .await
        .unwrap();
    create(&mesh, &me.token, &receiver.url(), &["job.canceled"], |_| {}).await.unwrap();
    mesh.stop().await;
}
