//! The engine's background work, in one call: what keeps licenses and
//! clients current without a request. An embedder runs it beside its own
//! routes; `billing-server` does the same.

use crate::billing::{error_chain, Billing};
use crate::events::EventHub;
use crate::storage::Store;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

impl<S: Store> Billing<S> {
    /// Runs, until `shutdown` resolves, everything the engine does on its
    /// own: every [`Billing::sweep_interval`], the dead-device reaper and
    /// the suspension of licenses whose past-due grace ran out; the event
    /// hub's outbox reading and pruning, when `hub` is given (the one the
    /// caller's event streams subscribe to); and, with the
    /// `vendor-webhooks` feature, the dispatcher of the vendor's webhooks.
    /// Returns once all of it has stopped. Safe on several instances.
    pub async fn run_background(&self, hub: Option<Arc<EventHub<S>>>, shutdown: impl Future<Output = ()> + Send) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let when_stopped = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let signal = async {
            shutdown.await;
            let _ = stop.send(true);
        };
        let hub = async {
            if let Some(hub) = hub {
                hub.run(when_stopped(stopped.clone())).await;
            }
        };
        #[cfg(feature = "vendor-webhooks")]
        let dispatcher = crate::vendor_webhooks::Dispatcher::new(self.clone()).run(when_stopped(stopped.clone()));
        #[cfg(not(feature = "vendor-webhooks"))]
        let dispatcher = async {};
        tokio::join!(signal, self.run_sweeps(when_stopped(stopped.clone())), hub, dispatcher);
    }

    /// How often the background work looks for dead devices and lapsed
    /// licenses: a quarter of the shortest heartbeat window any floating
    /// plan (or the server) has, within 0.25–60 s, so a silent device is
    /// declared dead at most a quarter window late.
    pub fn sweep_interval(&self) -> Duration {
        let config = self.config();
        let window = config.plans.shortest_heartbeat_window(config.licensing.heartbeat_window).as_seconds_f64();
        Duration::from_secs_f64((window / 4.0).clamp(0.25, 60.0))
    }

    async fn run_sweeps(&self, stop: impl Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(self.sweep_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {}
            }
            match self.reap_dead_devices().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(devices = n, "declared devices dead after missed heartbeats"),
                Err(e) => tracing::warn!(error = %error_chain(&e), "reaping dead devices failed"),
            }
            match self.suspend_lapsed_licenses().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(licenses = n, "suspended licenses whose past-due grace period ended"),
                Err(e) => tracing::warn!(error = %error_chain(&e), "suspending lapsed licenses failed"),
            }
        }
    }
}
