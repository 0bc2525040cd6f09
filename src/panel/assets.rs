//! The page, compiled in (shared/DESIGN.md §8: "Assets live in `web/` … and are
//! compiled in"). No file is read at run time, so nothing on disk can change what the
//! panel serves, and no path from a request ever reaches the file system here.

/// One compiled-in file.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
}

const INDEX: Asset = Asset {
    content_type: "text/html; charset=utf-8",
    body: include_bytes!("../../web/index.html"),
};

/// Every path the page is served under, and what it serves.
const ASSETS: &[(&str, Asset)] = &[
    ("/", INDEX),
    ("/index.html", INDEX),
    (
        "/app.js",
        Asset {
            content_type: "text/javascript; charset=utf-8",
            body: include_bytes!("../../web/app.js"),
        },
    ),
    (
        "/app.css",
        Asset {
            content_type: "text/css; charset=utf-8",
            body: include_bytes!("../../web/app.css"),
        },
    ),
    (
        "/favicon.svg",
        Asset {
            content_type: "image/svg+xml",
            body: include_bytes!("../../web/favicon.svg"),
        },
    ),
];

/// The asset served at `path`, if any.
pub fn find(path: &str) -> Option<Asset> {
    ASSETS.iter().find(|(p, _)| *p == path).map(|(_, a)| *a)
}

/// Every asset path (for tests).
pub fn paths() -> impl Iterator<Item = &'static str> {
    ASSETS.iter().map(|(p, _)| *p)
}
