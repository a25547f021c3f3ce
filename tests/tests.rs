//! Integration tests: the built `parley` binary, spawned and driven through real MCP clients.

mod audit_load;
mod audit_log;
mod auth;
mod bad_input;
mod contract_cli;
mod docs;
mod governance;
mod http;
mod init;
mod negotiation;
mod notices;
mod tidy;
mod tools;
mod util;
