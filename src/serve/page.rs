//! The map page at `/` and the files it loads, all built into the binary so the page works
//! with no internet: Leaflet, topojson-client and Natural Earth's country outlines (world-atlas),
//! unmodified, with their licences (`assets/web/vendor/README.md`). `--tiles URL` adds a tile
//! layer for users who are online.

use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::Router;
use std::sync::Arc;

macro_rules! asset {
    ($path:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/web/", $path))
    };
}

/// Served files: URL path, content type, bytes.
const FILES: &[(&str, &str, &[u8])] = &[
    ("/app.js", "text/javascript", asset!("app.js")),
    ("/app.css", "text/css", asset!("app.css")),
    (
        "/vendor/leaflet.js",
        "text/javascript",
        asset!("vendor/leaflet-1.9.4/leaflet.js"),
    ),
    (
        "/vendor/leaflet.css",
        "text/css",
        asset!("vendor/leaflet-1.9.4/leaflet.css"),
    ),
    (
        "/vendor/topojson-client.min.js",
        "text/javascript",
        asset!("vendor/topojson-client-3.1.0/topojson-client.min.js"),
    ),
    (
        "/vendor/countries-110m.json",
        "application/json",
        asset!("vendor/world-atlas-2.0.2/countries-110m.json"),
    ),
    (
        "/vendor/LICENSE-leaflet.txt",
        "text/plain",
        asset!("vendor/leaflet-1.9.4/LICENSE"),
    ),
    (
        "/vendor/LICENSE-topojson-client.txt",
        "text/plain",
        asset!("vendor/topojson-client-3.1.0/LICENSE"),
    ),
    (
        "/vendor/LICENSE-world-atlas.txt",
        "text/plain",
        asset!("vendor/world-atlas-2.0.2/LICENSE"),
    ),
];

/// The page's HTML, with the tile URL (if any) for the script to read.
pub struct Page {
    index: String,
}

impl Page {
    pub fn new(tiles: Option<&str>) -> Self {
        let html = std::str::from_utf8(asset!("index.html")).expect("index.html is UTF-8");
        let tiles = tiles.map(escape).unwrap_or_default();
        Self {
            index: html.replace("{{tiles}}", &tiles),
        }
    }
}

/// Text safe inside an HTML attribute value.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn routes<S: Clone + Send + Sync + 'static>(page: Arc<Page>) -> Router<S> {
    let mut router = Router::new().route(
        "/",
        get(move || {
            let page = page.clone();
            async move { Html(page.index.clone()) }
        }),
    );
    for &(path, content_type, bytes) in FILES {
        router = router.route(
            path,
            get(move || async move {
                let headers = [
                    (header::CONTENT_TYPE, content_type),
                    (header::CACHE_CONTROL, "public, max-age=3600"),
                ];
                (headers, bytes).into_response()
            }),
        );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tile_url_cannot_break_out_of_its_attribute() {
        let page = Page::new(Some("https://t/{z}/{x}/{y}.png?a=1&b=\"><script>"));
        assert!(page
            .index
            .contains("content=\"https://t/{z}/{x}/{y}.png?a=1&amp;b=&quot;&gt;&lt;script&gt;\""));
        assert!(Page::new(None)
            .index
            .contains("name=\"streetclip-tiles\" content=\"\""));
    }
}
