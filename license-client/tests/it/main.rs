//! license-client against a real billing-server started in-process on a
//! fresh PostgreSQL database per test: one test binary, a module per feature.

mod air_gapped;
mod architecture;
mod events;
mod helpers;
mod offline;
mod online;
