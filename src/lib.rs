//! stampede: a message-driven commerce backend for coupon drops and flash sales.
//!
//! Requests arrive on Kafka (directly or through the HTTP [`gateway`]), the
//! [`workers`] decide them with Redis [`counters`] and make them durable in the
//! PostgreSQL [`store`], and results go back out on result topics. The pure
//! business rules live in [`domain`] and never touch I/O.
#![forbid(unsafe_code)]

pub mod app;
pub mod audit;
pub mod cli;
pub mod config;
pub mod contracts;
pub mod counters;
pub mod dlq;
pub mod domain;
pub mod gateway;
pub mod kafka;
pub mod loadgen;
pub mod pages;
pub mod reconcile;
pub mod seed;
pub mod store;
pub mod telemetry;
pub mod workers;

pub use app::{run, Running};
pub use config::Settings;
