//! `WebhookService`: endpoints and their deliveries, scoped to the caller (admins see all).

use std::{sync::Arc, time::Duration};

use sakuga_mesh::{api::Page, auth as mesh_auth};
use sakuga_proto::v1::{self as pb, webhook_service_server::WebhookService};
use tonic::{Request, Response, Status};

use crate::{
    convert::{self, parse_id},
    webhook::{DeliveryFilter, EndpointChanges, NewEndpoint},
    webhooks::Webhooks,
};

/// The gRPC face of [`Webhooks`].
#[derive(Debug, Clone)]
pub(super) struct WebhookApi {
    pub(super) webhooks: Arc<Webhooks>,
    /// Where refusals by the endpoint ceiling are counted.
    pub(super) metrics: Arc<sakuga_mesh::metrics::Metrics>,
}

/// An optional UUID filter: empty for none.
fn optional_id(field: &'static str, s: &str) -> Result<Option<uuid::Uuid>, Status> {
    if s.is_empty() { Ok(None) } else { Ok(Some(parse_id(field, s)?)) }
}

#[tonic::async_trait]
impl WebhookService for WebhookApi {
    async fn create_webhook(
        &self,
        req: Request<pb::CreateWebhookRequest>,
    ) -> Result<Response<pb::CreateWebhookResponse>, Status> {
        let owner = mesh_auth::caller(&req)?.user_id()?.to_string();
        let r = req.into_inner();
        let new = NewEndpoint {
            url: r.url,
            events: r.events,
            project_id: r.project_id,
            only_named_jobs: r.only_named_jobs,
            description: r.description,
            max_concurrency: r.max_concurrency,
            timeout_ms: r.timeout_ms,
        };
        let (endpoint, secret) = self.webhooks.create(&owner, &new).await.inspect_err(|e| {
            if let Some(ceiling) = e.ceiling() {
                self.metrics.ceiling_refused(ceiling);
            }
        })?;
        let target = format!("webhook:{}", endpoint.id);
        Ok(mesh_auth::audited(
            pb::CreateWebhookResponse { webhook: Some(convert::webhook(&endpoint)), secret },
            target,
        ))
    }

    async fn get_webhook(
        &self,
        req: Request<pb::GetWebhookRequest>,
    ) -> Result<Response<pb::GetWebhookResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("webhook_id", &req.get_ref().webhook_id)?;
        let endpoint = self.webhooks.get(id, scope.as_deref()).await?;
        Ok(Response::new(pb::GetWebhookResponse { webhook: Some(convert::webhook(&endpoint)) }))
    }

    async fn list_webhooks(
        &self,
        req: Request<pb::ListWebhooksRequest>,
    ) -> Result<Response<pb::ListWebhooksResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let (endpoints, next_page_token) = self.webhooks.list(scope.as_deref(), &page).await?;
        Ok(Response::new(pb::ListWebhooksResponse {
            webhooks: endpoints.iter().map(convert::webhook).collect(),
            next_page_token,
        }))
    }

    async fn update_webhook(
        &self,
        req: Request<pb::UpdateWebhookRequest>,
    ) -> Result<Response<pb::UpdateWebhookResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let id = parse_id("webhook_id", &r.webhook_id)?;
        let changes = EndpointChanges {
            url: r.url,
            events: r.events.map(|e| e.names),
            project_id: r.project_id,
            only_named_jobs: r.only_named_jobs,
            enabled: r.enabled,
            description: r.description,
            max_concurrency: r.max_concurrency,
            timeout_ms: r.timeout_ms,
        };
        let endpoint = self.webhooks.update(id, scope.as_deref(), &changes).await?;
        Ok(mesh_auth::audited(
            pb::UpdateWebhookResponse { webhook: Some(convert::webhook(&endpoint)) },
            format!("webhook:{id}"),
        ))
    }

    async fn delete_webhook(
        &self,
        req: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("webhook_id", &req.get_ref().webhook_id)?;
        self.webhooks.delete(id, scope.as_deref()).await?;
        Ok(mesh_auth::audited(pb::DeleteWebhookResponse {}, format!("webhook:{id}")))
    }

    async fn test_webhook(
        &self,
        req: Request<pb::TestWebhookRequest>,
    ) -> Result<Response<pb::TestWebhookResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("webhook_id", &req.get_ref().webhook_id)?;
        let t = self.webhooks.test(id, scope.as_deref()).await?;
        Ok(mesh_auth::audited(
            pb::TestWebhookResponse {
                message_id: t.message_id,
                status_code: u32::from(t.sent.status),
                error: t.sent.error,
                duration_ms: u32::try_from(t.sent.elapsed.as_millis()).unwrap_or(u32::MAX),
            },
            format!("webhook:{id}"),
        ))
    }

    async fn rotate_webhook_secret(
        &self,
        req: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let id = parse_id("webhook_id", &r.webhook_id)?;
        let overlap = r.overlap_seconds.map(|s| Duration::from_secs(u64::from(s)));
        let (endpoint, secret) = self.webhooks.rotate(id, scope.as_deref(), overlap).await?;
        Ok(mesh_auth::audited(
            pb::RotateWebhookSecretResponse { webhook: Some(convert::webhook(&endpoint)), secret },
            format!("webhook:{id}"),
        ))
    }

    async fn list_deliveries(
        &self,
        req: Request<pb::ListDeliveriesRequest>,
    ) -> Result<Response<pb::ListDeliveriesResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let r = req.into_inner();
        let page = Page::parse(r.page_size, &r.page_token)?;
        let filter = DeliveryFilter {
            endpoint_id: optional_id("webhook_id", &r.webhook_id)?,
            job_id: optional_id("job_id", &r.job_id)?,
            state: convert::delivery_state_from(r.state)?,
            cursor: None,
        };
        let (deliveries, next_page_token) = self.webhooks.deliveries(scope.as_deref(), filter, &page).await?;
        Ok(Response::new(pb::ListDeliveriesResponse {
            deliveries: deliveries.iter().map(convert::delivery).collect(),
            next_page_token,
        }))
    }

    async fn redeliver_webhook(
        &self,
        req: Request<pb::RedeliverWebhookRequest>,
    ) -> Result<Response<pb::RedeliverWebhookResponse>, Status> {
        let scope = mesh_auth::caller(&req)?.owner_scope()?;
        let id = parse_id("delivery_id", &req.get_ref().delivery_id)?;
        let delivery = self.webhooks.redeliver(id, scope.as_deref()).await?;
        Ok(mesh_auth::audited(
            pb::RedeliverWebhookResponse { delivery: Some(convert::delivery(&delivery)) },
            format!("delivery:{id}"),
        ))
    }
}
