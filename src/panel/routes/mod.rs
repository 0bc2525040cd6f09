//! The endpoints, one file per tab (issue 6), each with its own table next to its
//! handlers. [`endpoints`] is the whole API: the router, the validator and
//! `/api/openapi.json` read nothing else.

pub mod backup;
pub mod core;
pub mod dashboard;
pub mod device;
pub mod exec;
pub mod files;
pub mod logs;
pub mod openclaw;
pub mod policy;
pub mod prefs;
pub mod qubes;
pub mod remote;
pub mod tools;
pub mod vms;

use super::api::Endpoint;

/// Every table, in the order of the tabs.
const TABLES: &[&[Endpoint]] = &[
    core::ENDPOINTS,
    dashboard::ENDPOINTS,
    logs::ENDPOINTS,
    vms::ENDPOINTS,
    exec::ENDPOINTS,
    files::ENDPOINTS,
    openclaw::ENDPOINTS,
    device::ENDPOINTS,
    prefs::ENDPOINTS,
    tools::ENDPOINTS,
    remote::ENDPOINTS,
    backup::ENDPOINTS,
    policy::ENDPOINTS,
];

/// Every endpoint.
pub fn endpoints() -> impl Iterator<Item = &'static Endpoint> {
    TABLES.iter().flat_map(|t| t.iter())
}
