//! The site's bundle under `/pkg` (the JS, the WASM and the CSS every page loads), served
//! precompressed and cached by content hash. Every visitor waits on it on a cold Machine.
//!
//! - `make build` writes `<file>.br` and `<file>.gz` next to each bundle file
//!   (`scripts/precompress`); [`ServeDir`] sends the variant the client accepts, else the raw
//!   file. Nothing is compressed per request.
//! - cargo-leptos (`hash-files = true` in `Cargo.toml`) names the files
//!   `<output>.<hash>.<ext>` and writes the hashes to `hash.txt` next to the server binary;
//!   `scripts/precompress` copies it into the site root. When that file is there and names
//!   files that exist, the pages link the hashed names ([`Bundle::links`]), and a hashed name,
//!   whose content never changes, is cached `immutable` for a year: a returning visitor's next
//!   Machine (same origin, same URL) loads its bundle from the browser's cache.
//! - Two bundles, one per app ([`hash_file_name`]): the launcher's and the Machines'. A server
//!   reads the hash file of its role's bundle only.
//! - The plain names (`/pkg/flyby.css`, ...) stay valid as aliases of the role's current
//!   files, revalidated on every use (`no-cache`): scripts and tests use them. Without a hash
//!   file every name is plain, and everything is `no-cache`.
//! - The same `Bundle` serves every Machine of one image, so the names a page links always
//!   exist on the Machine that serves the page.

use crate::role::Role;
use axum::{
    body::Body,
    response::{IntoResponse, Response},
};
use http::{header, HeaderValue, Request, StatusCode, Uri};
use leptos::config::LeptosOptions;
use std::{
    collections::HashMap,
    convert::Infallible,
    path::{Path, PathBuf},
    sync::Arc,
};
use tower::ServiceExt;
use tower_http::services::ServeDir;

/// For names that carry a content hash: never revalidated.
const IMMUTABLE: HeaderValue = HeaderValue::from_static("public, max-age=31536000, immutable");
/// For plain names, whose content changes with each build: revalidated (Last-Modified).
const REVALIDATE: HeaderValue = HeaderValue::from_static("no-cache");

/// The bundle files a build produced, by the names pages use.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// Plain name (`flyby.js`) -> hashed name (`flyby.<hash>.js`); empty without hashing.
    hashed: HashMap<String, String>,
}

impl Bundle {
    /// Finds the hash file of `role`'s bundle ([`hash_file_name`]), in the site root (where
    /// `scripts/precompress` copies it, so that the site describes itself wherever it is
    /// copied) or next to the running executable (where cargo-leptos writes it), and keeps its
    /// names when every file it names is in the site's pkg directory.
    pub fn find(options: &LeptosOptions, role: Role) -> Self {
        let name = hash_file_name(role);
        let exe_dir = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf));
        let candidates = [Some(Path::new(&*options.site_root).join(name))]
            .into_iter()
            .chain([exe_dir.map(|dir| dir.join(name))])
            .flatten();
        for file in candidates {
            let Ok(text) = std::fs::read_to_string(&file) else {
                continue;
            };
            let bundle = Bundle::parse(&options.output_name, &text);
            let dir = pkg_dir(options);
            if bundle.is_hashed() && bundle.hashed.values().all(|n| dir.join(n).is_file()) {
                return bundle;
            }
            tracing::warn!(
                hash_file = %file.display(),
                pkg_dir = %dir.display(),
                "the hash file does not match the site; serving plain names"
            );
        }
        Bundle::default()
    }

    /// The names in cargo-leptos's hash file (`js: <hash>` lines) for `output` files.
    fn parse(output: &str, text: &str) -> Self {
        let hashed = text
            .lines()
            .filter_map(|line| line.split_once(':'))
            .map(|(ext, hash)| (ext.trim(), hash.trim()))
            .filter(|(ext, hash)| {
                matches!(*ext, "js" | "wasm" | "css")
                    && !hash.is_empty()
                    && hash
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
            .map(|(ext, hash)| (format!("{output}.{ext}"), format!("{output}.{hash}.{ext}")))
            .collect();
        Bundle { hashed }
    }

    pub fn is_hashed(&self) -> bool {
        !self.hashed.is_empty()
    }

    /// What every page links: the stylesheet, and the island loader with the JS glue and
    /// the WASM, by their hashed names when the bundle is hashed.
    pub fn links(&self, options: &LeptosOptions) -> crate::app::BundleLinks {
        let url = |ext: &str| {
            let name = format!("{}.{ext}", options.output_name);
            let name = self.hashed.get(&name).unwrap_or(&name);
            format!("/{}/{name}", options.site_pkg_dir)
        };
        crate::app::BundleLinks::new(&url("css"), &url("js"), &url("wasm"))
    }

    /// The file to serve for `name`, and how long it may be cached.
    fn resolve<'a>(&'a self, name: &'a str) -> (&'a str, HeaderValue) {
        if let Some(hashed) = self.hashed.get(name) {
            (hashed, REVALIDATE)
        } else if self.hashed.values().any(|h| h == name) {
            (name, IMMUTABLE)
        } else {
            (name, REVALIDATE)
        }
    }
}

/// The hash file of the bundle `role`'s pages load. `make build` makes two bundles: the
/// launcher's (cargo-leptos's own run, `hash.txt`) and the Machines' (a second run with the
/// `machine-bundle` feature, `machine-hash.txt`), each hydrating only its app's island, so a
/// visitor's Machine page fetches and compiles no launcher code (BENCHMARKS.md, row 7). Both
/// sit in the same pkg directory; their files differ by hash, the stylesheet is the same.
pub fn hash_file_name(role: Role) -> &'static str {
    match role {
        Role::Launcher => "hash.txt",
        Role::Ephemeral | Role::Concierge => "machine-hash.txt",
    }
}

fn pkg_dir(options: &LeptosOptions) -> PathBuf {
    Path::new(&*options.site_root).join(&*options.site_pkg_dir)
}

/// The service to nest at `/<site_pkg_dir>`: the files of the pkg directory, precompressed
/// variants preferred, with the cache policy of their name. Missing files are plain 404s.
pub fn service(
    options: &LeptosOptions,
    bundle: Bundle,
) -> impl tower::Service<
    Request<Body>,
    Response = Response,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response, Infallible>> + Send,
> + Clone
       + Send
       + Sync
       + 'static {
    let dir = ServeDir::new(pkg_dir(options))
        .precompressed_br()
        .precompressed_gzip();
    let bundle = Arc::new(bundle);
    tower::service_fn(move |mut request: Request<Body>| {
        let dir = dir.clone();
        let bundle = bundle.clone();
        async move {
            let name = request.uri().path().trim_start_matches('/');
            let (file, cache) = bundle.resolve(name);
            if file != name {
                if let Ok(uri) = Uri::try_from(format!("/{file}")) {
                    *request.uri_mut() = uri;
                }
            }
            let Ok(response) = dir.oneshot(request).await;
            let mut response = response.map(Body::new);
            let status = response.status();
            if status.is_success() || status == StatusCode::NOT_MODIFIED {
                let headers = response.headers_mut();
                headers.insert(header::CACHE_CONTROL, cache);
                headers.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            }
            Ok::<_, Infallible>(response.into_response())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASHES: &str = "js: AbC-1_x\nwasm: Zz9\ncss: Q\n";

    #[test]
    fn the_hash_file_names_the_three_bundle_files() {
        let bundle = Bundle::parse("flyby", HASHES);
        assert_eq!(bundle.hashed["flyby.js"], "flyby.AbC-1_x.js");
        assert_eq!(bundle.hashed["flyby.wasm"], "flyby.Zz9.wasm");
        assert_eq!(bundle.hashed["flyby.css"], "flyby.Q.css");
        // Other lines (wasm-split's) and odd hashes are ignored.
        let odd = Bundle::parse("flyby", "manifest: abc\njs: ../x\n");
        assert!(!odd.is_hashed());
    }

    #[test]
    fn hashed_names_are_immutable_plain_names_are_revalidated_aliases() {
        let bundle = Bundle::parse("flyby", HASHES);
        assert_eq!(
            bundle.resolve("flyby.Zz9.wasm"),
            ("flyby.Zz9.wasm", IMMUTABLE)
        );
        assert_eq!(bundle.resolve("flyby.wasm"), ("flyby.Zz9.wasm", REVALIDATE));
        assert_eq!(bundle.resolve("flyby.d.ts"), ("flyby.d.ts", REVALIDATE));
        let plain = Bundle::default();
        assert_eq!(plain.resolve("flyby.wasm"), ("flyby.wasm", REVALIDATE));
    }

    #[test]
    fn pages_link_the_hashed_names_and_the_plain_ones_without_hashes() {
        let options = LeptosOptions::builder().output_name("flyby").build();
        let hashed = Bundle::parse("flyby", HASHES).links(&options);
        assert_eq!(&*hashed.css, "/pkg/flyby.Q.css");
        // The preloaded files are the ones the loader asks for.
        assert_eq!(&*hashed.js, "/pkg/flyby.AbC-1_x.js");
        assert_eq!(&*hashed.wasm, "/pkg/flyby.Zz9.wasm");
        assert!(
            hashed
                .loader
                .ends_with(r#"("/pkg/flyby.AbC-1_x.js", "/pkg/flyby.Zz9.wasm");"#),
            "{}",
            hashed.loader
        );
        let plain = Bundle::default().links(&options);
        assert_eq!(&*plain.css, "/pkg/flyby.css");
        assert!(plain
            .loader
            .ends_with(r#"("/pkg/flyby.js", "/pkg/flyby.wasm");"#));
    }
}
