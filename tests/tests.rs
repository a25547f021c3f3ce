//! Integration tests: the built `parley` binary, spawned and driven through real MCP clients.

mod audit_log;
mod bad_input;
mod docs;
mod http;
mod init;
mod tools;
mod util;
