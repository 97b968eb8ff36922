//! `webhooks …`: endpoints that get a signed POST when a job changes state, and the
//! deliveries to them.

use sakuga_proto::v1 as pb;

use super::shared::{page_note, project_id};
use crate::{
    CliError,
    args::{CreateWebhookArgs, UpdateWebhookArgs, WebhooksCmd},
    output,
    session::Session,
};

/// The longest overlap of two secrets the service takes: 7 days.
const MAX_OVERLAP_SECONDS: u64 = 7 * 86_400;

/// Runs a `webhooks` command.
pub(super) async fn run(s: &Session, cmd: &WebhooksCmd, json: bool) -> Result<(), CliError> {
    let mut webhooks = s.webhooks().await?;
    let webhook = match cmd {
        WebhooksCmd::Create(a) => {
            let project = match a.project.as_deref() {
                Some(p) if !p.is_empty() => project_id(s, p).await?,
                _ => String::new(),
            };
            let resp = webhooks.create_webhook(create_request(a, project)).await?.into_inner();
            print_secret(json, &resp.webhook.unwrap_or_default(), resp.secret);
            return Ok(());
        }
        WebhooksCmd::List { page } => {
            let resp = webhooks
                .list_webhooks(pb::ListWebhooksRequest {
                    page_size: page.limit,
                    page_token: page.page_token.clone(),
                })
                .await?
                .into_inner();
            let rows: Vec<output::Webhook> = output::all(&resp.webhooks);
            output::print(
                json,
                &rows,
                &["id", "url", "events", "enabled", "project_id", "consecutive_failures", "created"],
            );
            page_note(json, &resp.next_page_token);
            return Ok(());
        }
        WebhooksCmd::Get { id } => {
            webhooks.get_webhook(pb::GetWebhookRequest { webhook_id: id.clone() }).await?.into_inner().webhook
        }
        WebhooksCmd::Update(a) => {
            let project = match a.project.as_deref() {
                Some("") => Some(String::new()),
                Some(p) => Some(project_id(s, p).await?),
                None => None,
            };
            webhooks.update_webhook(update_request(a, project)).await?.into_inner().webhook
        }
        WebhooksCmd::Delete { id } => {
            webhooks.delete_webhook(pb::DeleteWebhookRequest { webhook_id: id.clone() }).await?;
            if !json {
                println!("deleted {id}");
            }
            return Ok(());
        }
        WebhooksCmd::Test { id } => {
            let resp =
                webhooks.test_webhook(pb::TestWebhookRequest { webhook_id: id.clone() }).await?.into_inner();
            output::print(json, &output::WebhookTest::from(&resp), &[]);
            return test_outcome(id, &resp);
        }
        WebhooksCmd::RotateSecret { id, overlap } => {
            let resp = webhooks
                .rotate_webhook_secret(pb::RotateWebhookSecretRequest {
                    webhook_id: id.clone(),
                    overlap_seconds: overlap.as_deref().map(overlap_seconds).transpose()?,
                })
                .await?
                .into_inner();
            print_secret(json, &resp.webhook.unwrap_or_default(), resp.secret);
            return Ok(());
        }
        WebhooksCmd::Deliveries { webhook, job, state, page } => {
            let resp = webhooks
                .list_deliveries(pb::ListDeliveriesRequest {
                    webhook_id: webhook.clone().unwrap_or_default(),
                    job_id: job.clone().unwrap_or_default(),
                    state: state_filter(state.as_deref())?,
                    page_size: page.limit,
                    page_token: page.page_token.clone(),
                })
                .await?
                .into_inner();
            let rows: Vec<output::Delivery> = output::all(&resp.deliveries);
            output::print(
                json,
                &rows,
                &[
                    "id",
                    "message_id",
                    "event",
                    "job_id",
                    "state",
                    "attempts",
                    "last_status_code",
                    "last_error",
                    "next_attempt",
                ],
            );
            page_note(json, &resp.next_page_token);
            return Ok(());
        }
        WebhooksCmd::Redeliver { delivery_id } => {
            let delivery = webhooks
                .redeliver_webhook(pb::RedeliverWebhookRequest { delivery_id: delivery_id.clone() })
                .await?
                .into_inner()
                .delivery;
            output::print(json, &output::Delivery::from(&delivery.unwrap_or_default()), &[]);
            return Ok(());
        }
    };
    output::print(json, &output::Webhook::from(&webhook.unwrap_or_default()), &[]);
    Ok(())
}

/// Prints an endpoint with the secret it was just given (shown this once).
fn print_secret(json: bool, webhook: &pb::WebhookEndpoint, secret: String) {
    if json {
        output::print(true, &output::Webhook::with_secret(webhook, secret), &[]);
    } else {
        println!("{}", output::webhook_with_secret(webhook, &secret));
        eprintln!("{}", output::secret_note(webhook));
    }
}

/// The CreateWebhook request of `webhooks create`, with its project already resolved to an
/// id (empty: every project). Limits left out are the service's defaults (0).
fn create_request(a: &CreateWebhookArgs, project_id: String) -> pb::CreateWebhookRequest {
    pb::CreateWebhookRequest {
        url: a.url.clone(),
        events: a.events.clone(),
        project_id,
        only_named_jobs: a.only_named_jobs,
        description: a.description.clone(),
        max_concurrency: a.max_concurrency.unwrap_or(0),
        timeout_ms: a.timeout_ms.unwrap_or(0),
    }
}

/// The UpdateWebhook request of `webhooks update`, with its project already resolved
/// (`Some("")` removes the filter). What the command line does not give stays unset.
fn update_request(a: &UpdateWebhookArgs, project_id: Option<String>) -> pb::UpdateWebhookRequest {
    pb::UpdateWebhookRequest {
        webhook_id: a.id.clone(),
        url: a.url.clone(),
        events: (!a.events.is_empty()).then(|| pb::WebhookEvents { names: a.events.clone() }),
        project_id,
        only_named_jobs: a.only_named_jobs,
        enabled: match (a.enable, a.disable) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        description: a.description.clone(),
        max_concurrency: a.max_concurrency,
        timeout_ms: a.timeout_ms,
    }
}

/// A test that reached no 2xx answer fails the command (exit 1) after its result is shown.
fn test_outcome(id: &str, resp: &pb::TestWebhookResponse) -> Result<(), CliError> {
    if resp.error.is_empty() && (200..300).contains(&resp.status_code) {
        return Ok(());
    }
    let status =
        if resp.status_code == 0 { "no response".to_owned() } else { format!("HTTP {}", resp.status_code) };
    let why = if resp.error.is_empty() { String::new() } else { format!(": {}", resp.error) };
    Err(CliError::other(format!("webhook {id}: the test event failed ({status}){why}")))
}

/// The DeliveryState filter of `--state` (0: any).
fn state_filter(state: Option<&str>) -> Result<i32, CliError> {
    let Some(s) = state else { return Ok(0) };
    let v = match s {
        "pending" => pb::DeliveryState::Pending,
        "delivered" => pb::DeliveryState::Delivered,
        "failed" => pb::DeliveryState::Failed,
        other => {
            return Err(CliError::usage(format!(
                "--state: unknown state {other:?} (pending, delivered, failed)"
            )));
        }
    };
    Ok(v.into())
}

/// `--overlap` in seconds: a number of seconds, or a duration such as `1d`, `12h`,
/// `1h 30m` (units s, m, h, d, w and their long names); at most 7 days.
fn overlap_seconds(text: &str) -> Result<u32, CliError> {
    let refuse = |why: &str| CliError::usage(format!("--overlap: {text:?} {why}"));
    let seconds = parse_duration(text)
        .ok_or_else(|| refuse("is not a duration (seconds, or e.g. 12h, 1d, 1h30m; units s, m, h, d, w)"))?;
    if seconds > MAX_OVERLAP_SECONDS {
        return Err(refuse(&format!(
            "is longer than 7 days ({MAX_OVERLAP_SECONDS} seconds), the longest overlap"
        )));
    }
    u32::try_from(seconds).map_err(|_| refuse("is too long"))
}

/// Seconds in `text`: bare seconds (`3600`), or number–unit pairs (`1d`, `1h 30m`,
/// `2days`). None when it is anything else or does not fit.
fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().ok();
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return None;
        }
        let number: u64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let letters = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let unit: u64 = match &rest[..letters] {
            "s" | "sec" | "secs" | "second" | "seconds" => 1,
            "m" | "min" | "mins" | "minute" | "minutes" => 60,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600,
            "d" | "day" | "days" => 86_400,
            "w" | "week" | "weeks" => 7 * 86_400,
            _ => return None,
        };
        total = total.checked_add(number.checked_mul(unit)?)?;
        rest = rest[letters..].trim_start();
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::args::{Cli, Command};

    fn webhooks(args: &[&str]) -> WebhooksCmd {
        let cli = Cli::try_parse_from([&["sakuga", "webhooks"], args].concat()).unwrap();
        let Command::Webhooks(cmd) = cli.command else { panic!("not a webhooks command") };
        cmd
    }

    fn refused(args: &[&str]) -> String {
        Cli::try_parse_from([&["sakuga", "webhooks"], args].concat()).unwrap_err().to_string()
    }

    #[test]
    fn create_sends_every_event_and_leaves_unset_limits_to_the_service() {
        let WebhooksCmd::Create(a) = webhooks(&[
            "create",
            "--url",
            "https://hooks.example.com/sakuga",
            "--event",
            "job.succeeded",
            "--event",
            "job.failed",
            "--only-named-jobs",
            "--timeout-ms",
            "5000",
        ]) else {
            panic!("not create")
        };
        let req = create_request(&a, "p-1".into());
        assert_eq!(req.url, "https://hooks.example.com/sakuga");
        assert_eq!(req.events, ["job.succeeded", "job.failed"]);
        assert_eq!(req.project_id, "p-1");
        assert!(req.only_named_jobs);
        assert_eq!((req.max_concurrency, req.timeout_ms), (0, 5000));
        assert_eq!(req.description, "");
    }

    #[test]
    fn create_needs_a_url_an_event_and_limits_above_zero() {
        assert!(refused(&["create", "--event", "job.failed"]).contains("--url"));
        assert!(refused(&["create", "--url", "https://h.example"]).contains("--event"));
        let e = refused(&[
            "create",
            "--url",
            "https://h.example",
            "--event",
            "job.failed",
            "--max-concurrency",
            "0",
        ]);
        assert!(e.contains("--max-concurrency"), "{e}");
    }

    #[test]
    fn update_sends_only_what_is_given() {
        let WebhooksCmd::Update(a) = webhooks(&["update", "w-1"]) else { panic!("not update") };
        let req = update_request(&a, None);
        assert_eq!(req, pb::UpdateWebhookRequest { webhook_id: "w-1".into(), ..Default::default() });

        let WebhooksCmd::Update(a) = webhooks(&[
            "update",
            "w-1",
            "--event",
            "job.canceled",
            "--only-named-jobs",
            "false",
            "--disable",
            "--description",
            "",
            "--max-concurrency",
            "8",
        ]) else {
            panic!("not update")
        };
        let req = update_request(&a, Some(String::new()));
        assert_eq!(req.events, Some(pb::WebhookEvents { names: vec!["job.canceled".into()] }));
        assert_eq!(req.project_id.as_deref(), Some(""), "an empty project removes the filter");
        assert_eq!(req.only_named_jobs, Some(false));
        assert_eq!(req.enabled, Some(false));
        assert_eq!(req.description.as_deref(), Some(""));
        assert_eq!((req.max_concurrency, req.timeout_ms, req.url), (Some(8), None, None));

        let WebhooksCmd::Update(a) = webhooks(&["update", "w-1", "--enable", "--only-named-jobs", "true"])
        else {
            panic!("not update")
        };
        let req = update_request(&a, None);
        assert_eq!((req.enabled, req.only_named_jobs), (Some(true), Some(true)));
    }

    #[test]
    fn update_refuses_enable_with_disable_and_a_flag_that_is_not_a_bool() {
        assert!(refused(&["update", "w-1", "--enable", "--disable"]).contains("--disable"));
        assert!(refused(&["update", "w-1", "--only-named-jobs", "yes"]).contains("--only-named-jobs"));
    }

    #[test]
    fn the_project_filter_is_kept_on_update_unless_named() {
        let WebhooksCmd::Update(a) = webhooks(&["update", "w-1", "--project", ""]) else {
            panic!("not update")
        };
        assert_eq!(a.project.as_deref(), Some(""));
        let WebhooksCmd::Update(a) = webhooks(&["update", "w-1"]) else { panic!("not update") };
        assert_eq!(a.project, None);
    }

    #[test]
    fn the_overlap_is_seconds_or_a_duration_of_at_most_a_week() {
        let WebhooksCmd::RotateSecret { overlap, .. } = webhooks(&["rotate-secret", "w-1"]) else {
            panic!("not rotate-secret")
        };
        assert_eq!(overlap, None, "left to the service's default");
        let WebhooksCmd::RotateSecret { overlap, .. } =
            webhooks(&["rotate-secret", "w-1", "--overlap", "1d"])
        else {
            panic!("not rotate-secret")
        };
        assert_eq!(overlap_seconds(overlap.as_deref().unwrap()).unwrap(), 86_400);
        for (text, seconds) in [
            ("0", 0),
            ("3600", 3_600),
            ("90s", 90),
            ("45m", 2_700),
            ("12h", 43_200),
            ("1h30m", 5_400),
            ("1h 30min", 5_400),
            ("2days", 172_800),
            ("1w", 604_800),
        ] {
            assert_eq!(overlap_seconds(text).unwrap(), seconds, "{text}");
        }
        for text in ["", "1.5h", "1y", "h", "-1", "12 parsecs", "99999999999999999999s"] {
            let e = overlap_seconds(text).unwrap_err();
            assert_eq!(e.code, 2, "{text}");
            assert!(e.message.starts_with("--overlap: "), "{}", e.message);
        }
        let e = overlap_seconds("8d").unwrap_err();
        assert!(e.message.contains("longer than 7 days"), "{}", e.message);
    }

    #[test]
    fn deliveries_filter_by_state_by_name() {
        assert_eq!(state_filter(None).unwrap(), 0);
        assert_eq!(state_filter(Some("pending")).unwrap(), i32::from(pb::DeliveryState::Pending));
        assert_eq!(state_filter(Some("delivered")).unwrap(), i32::from(pb::DeliveryState::Delivered));
        assert_eq!(state_filter(Some("failed")).unwrap(), i32::from(pb::DeliveryState::Failed));
        let e = state_filter(Some("lost")).unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.starts_with("--state: "), "{}", e.message);

        let WebhooksCmd::Deliveries { webhook, job, state, page } =
            webhooks(&["deliveries", "--webhook", "w-1", "--state", "failed", "--limit", "5"])
        else {
            panic!("not deliveries")
        };
        assert_eq!((webhook.as_deref(), job, state.as_deref()), (Some("w-1"), None, Some("failed")));
        assert_eq!((page.limit, page.page_token.as_str()), (5, ""));
    }

    #[test]
    fn a_test_without_a_2xx_answer_fails_the_command() {
        let answered = |status_code, error: &str| pb::TestWebhookResponse {
            status_code,
            error: error.into(),
            ..Default::default()
        };
        assert!(test_outcome("w-1", &answered(204, "")).is_ok());
        let e = test_outcome("w-1", &answered(500, "the endpoint answered 500")).unwrap_err();
        assert_eq!(e.code, 1);
        assert_eq!(e.message, "webhook w-1: the test event failed (HTTP 500): the endpoint answered 500");
        let e = test_outcome("w-1", &answered(302, "")).unwrap_err();
        assert_eq!(e.message, "webhook w-1: the test event failed (HTTP 302)");
        let e = test_outcome("w-1", &answered(0, "timed out after 10000 ms")).unwrap_err();
        assert_eq!(e.message, "webhook w-1: the test event failed (no response): timed out after 10000 ms");
    }
}
