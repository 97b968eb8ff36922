//! One tower layer per concern of the guard. Each concern is a [`Step`]: work before the
//! inner service (which may refuse the call) and after it (which sees the response); one
//! generic [`Stepped`] service runs any step, so the tower plumbing is written once.

use std::{
    future::Future,
    task::{Context, Poll},
};

use futures_util::future::BoxFuture;
use tonic::body::Body;

use super::Refusal;

/// Put on the response of a refused call: which refusal, for the outer layers (metrics,
/// audit).
#[derive(Debug, Clone)]
pub(crate) struct Refused(pub(crate) Refusal);

/// The answer to a refused call: its status (with `ErrorInfo`) and the [`Refused`] marker.
pub(crate) fn refusal_response(refusal: Refusal) -> http::Response<Body> {
    let mut resp = refusal.to_status().into_http::<Body>();
    resp.extensions_mut().insert(Refused(refusal));
    resp
}

/// One concern of the guard.
pub trait Step: Clone + Send + Sync + 'static {
    /// Carried from `before` to `after`.
    type State: Send + 'static;

    /// Runs before the inner service; `Err` answers the call with that refusal at once.
    fn before<'a>(
        &'a self,
        req: &'a mut http::Request<Body>,
    ) -> impl Future<Output = Result<Self::State, Refusal>> + Send + 'a;

    /// Runs on the inner service's response (refusals of inner layers included).
    fn after<'a>(
        &'a self,
        state: Self::State,
        resp: &'a mut http::Response<Body>,
    ) -> impl Future<Output = ()> + Send + 'a;
}

/// The tower layer of a [`Step`].
#[derive(Debug, Clone)]
pub struct StepLayer<St>(pub(crate) St);

impl<St: Clone, S> tower::Layer<S> for StepLayer<St> {
    type Service = Stepped<St, S>;

    fn layer(&self, inner: S) -> Self::Service {
        Stepped { step: self.0.clone(), inner }
    }
}

/// A service wrapped by one [`Step`].
#[derive(Debug, Clone)]
pub struct Stepped<St, S> {
    step: St,
    inner: S,
}

impl<St, S> tower::Service<http::Request<Body>> for Stepped<St, S>
where
    St: Step,
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        // The clone that was polled ready handles this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let step = self.step.clone();
        Box::pin(async move {
            match step.before(&mut req).await {
                Err(refusal) => Ok(refusal_response(refusal)),
                Ok(state) => {
                    let mut resp = inner.call(req).await?;
                    step.after(state, &mut resp).await;
                    Ok(resp)
                }
            }
        })
    }
}
