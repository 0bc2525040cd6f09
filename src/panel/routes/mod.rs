//! The endpoints, one file per tab (issue 6), each with its own table next to its
//! handlers. [`endpoints`] is the whole API: the router, the validator and
//! `/api/openapi.json` read nothing else.

pub mod core;
pub mod dashboard;
pub mod exec;
pub mod logs;
pub mod prefs;
pub mod qubes;
pub mod vms;

use super::api::Endpoint;

/// Every table, in the order of the tabs.
const TABLES: &[&[Endpoint]] = &[
    core::ENDPOINTS,
    dashboard::ENDPOINTS,
    logs::ENDPOINTS,
    vms::ENDPOINTS,
    exec::ENDPOINTS,
    prefs::ENDPOINTS,
];

/// Every endpoint.
pub fn endpoints() -> impl Iterator<Item = &'static Endpoint> {
    TABLES.iter().flat_map(|t| t.iter())
}
