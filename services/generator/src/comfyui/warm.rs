//! Start-up on each server: the configured templates' node classes are checked against
//! what the server has (a missing one is a configuration error), then the models to
//! preload are loaded by a tiny run each, so the first job is not a cold start.

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::sync::Arc;

use super::{ComfyError, ComfyUi, Server};
use crate::backend::{GenerationSpec, JobInput, Kind, Sink};

impl ComfyUi {
    /// Checks the templates' node classes against `server` and preloads the configured
    /// models there; an unreachable server is only logged.
    pub(super) async fn warm_server(
        &self,
        server: &Arc<Server>,
        cancel: &CancellationToken,
    ) -> Result<(), ComfyError> {
        if self.socket_ready(server, "warm-up").await.is_err() {
            warn!(url = %server.api.base(), "ComfyUI not reachable at start-up; templates not checked, nothing preloaded");
            return Ok(());
        }
        for (field, name) in [
            ("comfyui.image_template", &self.config.image_template),
            ("comfyui.video_template", &self.config.video_template),
        ] {
            for class in self.templates[name].class_types() {
                match server.api.has_node(class).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return Err(ComfyError::MissingNode {
                            field,
                            template: name.clone(),
                            class: class.to_owned(),
                            server: server.api.base().to_string(),
                        });
                    }
                    Err(e) => {
                        warn!(url = %server.api.base(), error = %e, "cannot check templates");
                        return Ok(());
                    }
                }
            }
        }
        let template = self.template_for(Kind::Image);
        if !template.uses("checkpoint") {
            return Ok(());
        }
        for model in &self.config.preload_models {
            let job = JobInput {
                job_id: uuid::Uuid::new_v4().to_string(),
                attempt: 1,
                spec: GenerationSpec {
                    kind: Kind::Image,
                    width: 64,
                    height: 64,
                    steps: 1,
                    seed: Some(0),
                    model: model.clone(),
                    ..Default::default()
                },
                prompt: "warm-up".into(),
            };
            let never = CancellationToken::new();
            match self.run_on(self.place_on(server), &job, template, &Sink::discard(), (cancel, &never)).await
            {
                Ok(_) => {
                    info!(url = %server.api.base(), %model, "model preloaded");
                    server
                        .loaded
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(model.clone());
                }
                Err(e) => warn!(url = %server.api.base(), %model, error = %e, "model preload failed"),
            }
        }
        Ok(())
    }
}
