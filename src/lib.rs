//! Parley: an MCP server through which AI agents discover Apache Iceberg tables, read their data contracts and
//! run bounded, read-only SQL over what policy allows — every call authorized and audited.
//!
//! The binary (`src/main.rs`) is thin wiring over these modules; see `ARCHITECTURE.md` for the flow, the code map
//! and the invariants.

#![forbid(unsafe_code)]

pub mod anchor;
pub mod audit;
pub mod benchdata;
pub mod bounded;
pub mod catalog;
pub mod checked;
pub mod clock;
pub mod column_cache;
pub mod compat;
pub mod config;
pub mod contracts;
pub mod demo;
pub mod gate;
pub mod governed;
pub mod http;
pub mod identity;
pub mod ids;
pub mod init;
pub mod jsonrpc;
pub mod key_index;
pub mod negotiation;
pub mod parallel;
pub mod plans;
pub mod policy;
pub mod publish;
pub mod quality;
pub mod query;
pub mod scan;
pub mod server;
pub mod store;
