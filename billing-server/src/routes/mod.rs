//! The route table and dispatch.

mod actions;
// Webhooks to the vendor (issue 14).
mod admin_webhooks;
// Admin reads (issue 14).
mod admin_reads;
// Admin license writes (issue 14).
mod admin_licenses;
mod dashboard;
pub(crate) mod license;
mod ops;
// The customer portal's sessions (issue 19).
mod portal;
// The pages embedded in the binary (issue 19).
pub mod pages;
// The vendor console's own routes (issue 19).
mod console;
mod terminals;
mod webhook;

use crate::error::ApiError;
use crate::http::RequestBody;
use crate::http::Response;
use crate::AppState;
use hyper::{Method, Request, StatusCode};
use std::sync::Arc;

/// Every route the server answers: (method, path pattern, handler).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    StripeWebhook,
    CurrentSubscription,
    SubscriptionHistory,
    BillingHistory,
    PaymentHistory,
    Plans,
    Licenses,
    Activate,
    Trial,
    Validate,
    Heartbeat,
    Deactivate,
    PublicKey,
    Terminals,
    OfflineActivation,
    DeleteTerminal,
    RenameTerminal,
    Events,
    Cancel,
    Reactivate,
    ChangePlan,
    Checkout,
    BillingPortal,
    PaymentMethod,
    SyncSubscriptions,
    // Webhooks to the vendor (issue 14).
    CreateWebhookEndpoint,
    WebhookEndpoints,
    DeleteWebhookEndpoint,
    WebhookDeliveries,
    RetryWebhookDelivery,
    // Admin reads (issue 14).
    AdminStripeEvents,
    AdminReplayStripeEvent,
    AdminAudit,
    AdminCustomers,
    AdminLicenses,
    AdminLicense,
    AdminLicenseExport,
    // --- Admin license writes (issue 14) ---
    AdminIssueLicense,
    AdminPatchLicense,
    AdminSuspendLicense,
    AdminReinstateLicense,
    AdminRevokeLicense,
    AdminRenewLicense,
    AdminDeleteDevice,
    AdminResetDevices,
    // --- The customer portal (issue 19) ---
    AdminCreatePortalSession,
    PortalSession,
    PortalPage,
    PageAsset,
    // --- The vendor console (issue 19) ---
    AdminToken,
    AdminOverview,
    ConsolePage,
}

/// The route table; the OpenAPI document is checked against it.
pub const ROUTES: &[(Method, &str, Route)] = &[
    (Method::GET, "/healthz", Route::Healthz),
    (Method::GET, "/readyz", Route::Readyz),
    (Method::GET, "/metrics", Route::Metrics),
    (Method::POST, "/api/stripe/webhooks/handler", Route::StripeWebhook),
    (Method::GET, "/api/subscriptions/current", Route::CurrentSubscription),
    (Method::GET, "/api/subscriptions/history", Route::SubscriptionHistory),
    (Method::GET, "/api/subscriptions/billing-history", Route::BillingHistory),
    (Method::GET, "/api/payments/history", Route::PaymentHistory),
    (Method::GET, "/api/subscriptions/plans", Route::Plans),
    (Method::GET, "/api/licenses", Route::Licenses),
    (Method::POST, "/api/license/activate", Route::Activate),
    (Method::POST, "/api/license/trial", Route::Trial),
    (Method::POST, "/api/license/validate", Route::Validate),
    (Method::POST, "/api/license/heartbeat", Route::Heartbeat),
    (Method::POST, "/api/license/deactivate", Route::Deactivate),
    (Method::GET, "/api/license/public-key", Route::PublicKey),
    (Method::GET, "/api/terminals", Route::Terminals),
    (Method::POST, "/api/terminals/offline-activation", Route::OfflineActivation),
    (Method::DELETE, "/api/terminals/{id}", Route::DeleteTerminal),
    (Method::PATCH, "/api/terminals/{id}", Route::RenameTerminal),
    (Method::GET, "/api/events/{licenseKey}", Route::Events),
    (Method::POST, "/api/subscriptions/cancel", Route::Cancel),
    (Method::POST, "/api/subscriptions/reactivate", Route::Reactivate),
    (Method::POST, "/api/subscriptions/change-plan", Route::ChangePlan),
    (Method::POST, "/api/stripe/checkout/create", Route::Checkout),
    (Method::POST, "/api/stripe/billing/portal", Route::BillingPortal),
    (Method::GET, "/api/stripe/billing/payment-method", Route::PaymentMethod),
    (Method::POST, "/api/stripe/subscriptions/sync", Route::SyncSubscriptions),
    // Webhooks to the vendor (issue 14).
    (Method::POST, "/api/admin/webhook-endpoints", Route::CreateWebhookEndpoint),
    (Method::GET, "/api/admin/webhook-endpoints", Route::WebhookEndpoints),
    (Method::DELETE, "/api/admin/webhook-endpoints/{id}", Route::DeleteWebhookEndpoint),
    (Method::GET, "/api/admin/webhook-endpoints/{id}/deliveries", Route::WebhookDeliveries),
    (Method::POST, "/api/admin/webhook-deliveries/{id}/retry", Route::RetryWebhookDelivery),
    // Admin reads (issue 14).
    (Method::GET, "/api/admin/stripe-events", Route::AdminStripeEvents),
    (Method::POST, "/api/admin/stripe-events/{id}/replay", Route::AdminReplayStripeEvent),
    (Method::GET, "/api/admin/audit", Route::AdminAudit),
    (Method::GET, "/api/admin/customers", Route::AdminCustomers),
    (Method::GET, "/api/admin/licenses", Route::AdminLicenses),
    (Method::GET, "/api/admin/licenses/{id}", Route::AdminLicense),
    (Method::GET, "/api/admin/licenses/export", Route::AdminLicenseExport),
    // --- Admin license writes (issue 14) ---
    (Method::POST, "/api/admin/licenses", Route::AdminIssueLicense),
    (Method::PATCH, "/api/admin/licenses/{id}", Route::AdminPatchLicense),
    (Method::POST, "/api/admin/licenses/{id}/suspend", Route::AdminSuspendLicense),
    (Method::POST, "/api/admin/licenses/{id}/reinstate", Route::AdminReinstateLicense),
    (Method::POST, "/api/admin/licenses/{id}/revoke", Route::AdminRevokeLicense),
    (Method::POST, "/api/admin/licenses/{id}/renew", Route::AdminRenewLicense),
    (Method::DELETE, "/api/admin/devices/{id}", Route::AdminDeleteDevice),
    (Method::POST, "/api/admin/licenses/{id}/reset-devices", Route::AdminResetDevices),
    // --- The customer portal (issue 19) ---
    (Method::POST, "/api/admin/portal-sessions", Route::AdminCreatePortalSession),
    (Method::POST, "/api/portal/session", Route::PortalSession),
    (Method::GET, "/portal", Route::PortalPage),
    (Method::GET, "/assets/{file}", Route::PageAsset),
    // --- The vendor console (issue 19) ---
    (Method::GET, "/api/admin/token", Route::AdminToken),
    (Method::GET, "/api/admin/overview", Route::AdminOverview),
    (Method::GET, "/console", Route::ConsolePage),
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
pub async fn dispatch(state: Arc<AppState>, request: Request<RequestBody>) -> Response {
    let result = async {
        let (route, params) = state.router.find(request.method(), request.uri().path())?;
        let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
        match route {
            Route::Healthz => ops::healthz(&state).await,
            Route::Readyz => ops::readyz(&state).await,
            Route::Metrics => ops::metrics(&state).await,
            Route::StripeWebhook => webhook::handle(&state, request).await,
            Route::CurrentSubscription => dashboard::current_subscription(&state, request).await,
            Route::SubscriptionHistory => dashboard::subscription_history(&state, request).await,
            Route::BillingHistory | Route::PaymentHistory => dashboard::payment_history(&state, request).await,
            Route::Plans => dashboard::plans(&state, request).await,
            Route::Licenses => dashboard::licenses(&state, request).await,
            Route::Activate => license::activate(&state, request).await,
            Route::Trial => license::trial(&state, request).await,
            Route::Validate => license::validate(&state, request).await,
            Route::Heartbeat => license::heartbeat(&state, request).await,
            Route::Deactivate => license::deactivate(&state, request).await,
            Route::PublicKey => license::public_key(&state).await,
            Route::Terminals => terminals::list(&state, request).await,
            Route::OfflineActivation => terminals::activate_offline(&state, request).await,
            Route::DeleteTerminal => terminals::delete(&state, request, &param("id")).await,
            Route::RenameTerminal => terminals::rename(&state, request, &param("id")).await,
            Route::Events => terminals::events(&state, request, &param("licenseKey")).await,
            Route::Cancel => actions::cancel(&state, request).await,
            Route::Reactivate => actions::reactivate(&state, request).await,
            Route::ChangePlan => actions::change_plan(&state, request).await,
            Route::Checkout => actions::checkout(&state, request).await,
            Route::BillingPortal => actions::portal(&state, request).await,
            Route::PaymentMethod => actions::payment_method(&state, request).await,
            Route::SyncSubscriptions => actions::sync(&state, request).await,
            // Webhooks to the vendor (issue 14).
            Route::CreateWebhookEndpoint => admin_webhooks::create(&state, request).await,
            Route::WebhookEndpoints => admin_webhooks::list(&state, request).await,
            Route::DeleteWebhookEndpoint => admin_webhooks::delete(&state, request, &param("id")).await,
            Route::WebhookDeliveries => admin_webhooks::deliveries(&state, request, &param("id")).await,
            Route::RetryWebhookDelivery => admin_webhooks::retry(&state, request, &param("id")).await,
            // Admin reads (issue 14).
            Route::AdminStripeEvents => admin_reads::stripe_events(&state, request).await,
            Route::AdminReplayStripeEvent => admin_reads::replay_stripe_event(&state, request, &param("id")).await,
            Route::AdminAudit => admin_reads::audit(&state, request).await,
            Route::AdminCustomers => admin_reads::customers(&state, request).await,
            Route::AdminLicenses => admin_reads::licenses(&state, request).await,
            Route::AdminLicense => admin_reads::license(&state, request, &param("id")).await,
            Route::AdminLicenseExport => admin_reads::export(&state, request).await,
            // --- Admin license writes (issue 14) ---
            Route::AdminIssueLicense => admin_licenses::issue(&state, request).await,
            Route::AdminPatchLicense => admin_licenses::patch(&state, request, &param("id")).await,
            Route::AdminSuspendLicense => {
                admin_licenses::act(&state, request, &param("id"), admin_licenses::Action::Suspend).await
            }
            Route::AdminReinstateLicense => {
                admin_licenses::act(&state, request, &param("id"), admin_licenses::Action::Reinstate).await
            }
            Route::AdminRevokeLicense => {
                admin_licenses::act(&state, request, &param("id"), admin_licenses::Action::Revoke).await
            }
            Route::AdminRenewLicense => admin_licenses::renew(&state, request, &param("id")).await,
            Route::AdminDeleteDevice => admin_licenses::delete_device(&state, request, &param("id")).await,
            Route::AdminResetDevices => admin_licenses::reset_devices(&state, request, &param("id")).await,
            // --- The customer portal (issue 19) ---
            Route::AdminCreatePortalSession => portal::create(&state, request).await,
            Route::PortalSession => portal::exchange(&state, request).await,
            Route::PortalPage => pages::portal(),
            Route::PageAsset => pages::asset(&param("file")),
            // --- The vendor console (issue 19) ---
            Route::AdminToken => console::whoami(&state, request).await,
            Route::AdminOverview => console::overview(&state, request).await,
            Route::ConsolePage => pages::console(),
        }
    }
    .await;
    result.unwrap_or_else(ApiError::into_response)
}
