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

#[cfg(test)]
mod tests {
    use super::super::api::Access;
    use super::*;

    #[test]
    fn every_api_call_needs_a_session_and_public_ones_are_outside_the_api() {
        // DESIGN §8: an API call without a valid session gets 401.
        let mut public = 0;
        for e in endpoints() {
            if e.access == Access::Public {
                public += 1;
                assert!(!e.path.starts_with("/api/"), "{} is public", e.path);
            }
        }
        assert_eq!(public, 1, "only the liveness check needs no session");
    }
}
