//! stampede: a message-driven commerce backend for coupon drops and flash sales.
//!
//! Requests arrive on Kafka (directly or through the HTTP [`gateway`]), the
//! [`workers`] decide them with Redis [`counters`] and make them durable in the
//! PostgreSQL [`store`], and results go back out on result topics. The pure
//! business rules live in [`domain`] and never touch I/O.
//!
//! Dependencies point down: `cli` and `app` on top; the `gateway`, the
//! `workers`, `loadgen`, `audit`, `dlq` and `reconcile` in the middle; the
//! adapters (`kafka`, `counters`, `store`, `telemetry`) below them; `domain`
//! at the bottom.
//!
//! # Where to look
//! - **Where coupon stock is taken**: [`workers::coupon`] (the hand-off
//!   between Redis and PostgreSQL, step by step), which calls
//!   `counters/lua/issue_coupons.lua` through [`counters::Counters::issue_coupons`].
//! - **What happens on redelivery**: [`kafka::consumer`] says why a message
//!   can come twice (offsets are stored only after the results are out);
//!   [`workers::pipeline`] answers a request already decided with its stored
//!   result, byte for byte, and decides a new one once.
//! - **Where results are published**: [`workers::pipeline`] builds each
//!   result message (keyed by user, with its source partition and offset);
//!   [`kafka::consumer`] publishes a batch's results before storing its
//!   offsets.
//! - **First come, first served**: [`kafka::merge`].
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
