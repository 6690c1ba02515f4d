//! Switchyard's integration tests: one binary, one module per thing a user
//! does. Every test drives the real gateway over loopback with the real AWS
//! SDK as client and the real simulator as Bedrock.

mod admission;
mod agent_frameworks;
mod anthropic;
mod api_errors;
mod attempt_engine;
mod auth;
mod authoring;
mod budgets;
mod chaos;
mod clients;
mod coalescing;
mod cooldown;
mod credentials;
mod edge;
mod fair_queue;
mod fuzz;
mod helm_chart;
mod hot_reload;
mod jobs;
mod keys_and_teams;
mod lab;
mod policy_faults;
mod policy_library;
mod presets;
mod redis_server;
mod routing;
mod shared_state;
mod stats;
mod status_page;
mod stream_endings;
mod streaming;
mod support;
mod traces;
