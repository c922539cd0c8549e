//! Prometheus metrics: request counts and latencies per route, webhook
//! outcomes per event type, and gauges read at scrape time (SSE streams,
//! outbox lag, database pool).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    webhooks: IntCounterVec,
    /// Requests being handled right now (SSE streams count until their head is sent).
    pub in_flight: IntGauge,
    /// Open SSE streams.
    pub sse_streams: IntGauge,
    /// Outbox events committed but not yet dispatched by this instance.
    pub outbox_lag: IntGauge,
    /// SSE subscribers dropped for not keeping up.
    pub sse_slow_disconnects: IntGauge,
    /// Database pool connections by state (`open`, `idle`, `max`).
    pub db_pool: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("billing".into()), None).expect("a valid prefix");
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route pattern, method and status"),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "Time to the response head, by route pattern, method and status",
            )
            .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["route", "method", "status"],
        )
        .expect("valid metric");
        let webhooks = IntCounterVec::new(
            Opts::new("webhook_events_total", "Stripe webhook deliveries by event type and outcome"),
            &["type", "outcome"],
        )
        .expect("valid metric");
        let in_flight =
            IntGauge::new("http_requests_in_flight", "Requests being handled right now").expect("valid metric");
        let sse_streams = IntGauge::new("sse_streams_open", "Open Server-Sent-Events streams").expect("valid metric");
        let outbox_lag =
            IntGauge::new("outbox_lag_events", "Committed outbox events not yet dispatched").expect("valid metric");
        let sse_slow_disconnects =
            IntGauge::new("sse_slow_disconnects", "SSE subscribers dropped for falling behind, since start")
                .expect("valid metric");
        let db_pool = IntGaugeVec::new(Opts::new("db_pool_connections", "Database pool connections"), &["state"])
            .expect("valid metric");
        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(webhooks.clone()),
            Box::new(in_flight.clone()),
            Box::new(sse_streams.clone()),
            Box::new(outbox_lag.clone()),
            Box::new(sse_slow_disconnects.clone()),
            Box::new(db_pool.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        Self {
            registry,
            requests,
            latency,
            webhooks,
            in_flight,
            sse_streams,
            outbox_lag,
            sse_slow_disconnects,
            db_pool,
        }
    }

    /// Records one answered request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.requests.with_label_values(&[route, method, &status]).inc();
        self.latency.with_label_values(&[route, method, &status]).observe(seconds);
    }

    /// Records one webhook delivery's outcome.
    pub fn observe_webhook(&self, event_type: &str, outcome: &str) {
        // Event types come from signed payloads only; cap their length anyway.
        let event_type = if event_type.len() > 64 { "other" } else { event_type };
        self.webhooks.with_label_values(&[event_type, outcome]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}
