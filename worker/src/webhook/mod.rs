//! Webhook delivery: the HTTP client ([`client`]) and the dispatcher of completion events
//! ([`dispatch`]).

pub mod client;
pub mod dispatch;
