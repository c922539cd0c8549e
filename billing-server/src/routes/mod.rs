//! The route table and dispatch.

mod dashboard;
mod ops;
mod webhook;

use crate::error::ApiError;
use crate::http::Response;
use crate::AppState;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use std::sync::Arc;

/// Every route the server answers: (method, path pattern, handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    StripeWebhook,
    CurrentSubscription,
    SubscriptionHistory,
    BillingHistory,
    PaymentHistory,
    Plans,
    Licenses,
}

/// The route table; the OpenAPI document is checked against it.
pub const ROUTES: &[(Method, &str, Route)] = &[
    (Method::GET, "/healthz", Route::Healthz),
    (Method::POST, "/api/stripe/webhooks/handler", Route::StripeWebhook),
    (Method::GET, "/api/subscriptions/current", Route::CurrentSubscription),
    (Method::GET, "/api/subscriptions/history", Route::SubscriptionHistory),
    (Method::GET, "/api/subscriptions/billing-history", Route::BillingHistory),
    (Method::GET, "/api/payments/history", Route::PaymentHistory),
    (Method::GET, "/api/subscriptions/plans", Route::Plans),
    (Method::GET, "/api/licenses", Route::Licenses),
];

/// Paths to their routes, one entry per path with every method it accepts.
pub struct Router {
    paths: matchit::Router<Vec<(Method, Route)>>,
}

impl Router {
    /// Builds the table from [`ROUTES`].
    pub fn new() -> Self {
        let mut by_path: Vec<(&str, Vec<(Method, Route)>)> = Vec::new();
        for (method, path, route) in ROUTES {
            match by_path.iter_mut().find(|(p, _)| p == path) {
                Some((_, methods)) => methods.push((method.clone(), *route)),
                None => by_path.push((path, vec![(method.clone(), *route)])),
            }
        }
        let mut paths = matchit::Router::new();
        for (path, methods) in by_path {
            paths.insert(path, methods).expect("route patterns are distinct");
        }
        Self { paths }
    }

    fn find(&self, method: &Method, path: &str) -> Result<(Route, Vec<(String, String)>), ApiError> {
        let matched = self.paths.at(path).map_err(|_| ApiError::not_found("no such route"))?;
        let route =
            matched.value.iter().find(|(m, _)| m == method).map(|(_, r)| *r).ok_or_else(|| {
                ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "method not allowed")
            })?;
        let params = matched.params.iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        Ok((route, params))
    }
}

impl Default for Router {
    fn default() -> Self {
        Self::new()
    }
}

/// The route name used in logs and metrics (the pattern, never the raw path,
/// which may hold a license key).
pub fn route_label(state: &AppState, method: &Method, path: &str) -> &'static str {
    match state.router.find(method, path) {
        Ok((route, _)) => ROUTES.iter().find(|(_, _, r)| *r == route).map_or("unknown", |(_, p, _)| p),
        Err(_) => "unmatched",
    }
}

/// Answers one request.
pub async fn dispatch(state: Arc<AppState>, request: Request<Incoming>) -> Response {
    let result = async {
        let (route, _params) = state.router.find(request.method(), request.uri().path())?;
        match route {
            Route::Healthz => ops::healthz(&state).await,
            Route::StripeWebhook => webhook::handle(&state, request).await,
            Route::CurrentSubscription => dashboard::current_subscription(&state, request).await,
            Route::SubscriptionHistory => dashboard::subscription_history(&state, request).await,
            Route::BillingHistory | Route::PaymentHistory => dashboard::payment_history(&state, request).await,
            Route::Plans => dashboard::plans(&state, request).await,
            Route::Licenses => dashboard::licenses(&state, request).await,
        }
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}
