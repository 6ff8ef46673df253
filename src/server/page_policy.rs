//! What a browser lets our pages do, said in response headers: a Content-Security-Policy that
//! allows only our own scripts (the island loader, inline, by its hash, and the few inline
//! scripts Leptos streams with a page, by the page's nonce: never `'unsafe-inline'`), our WASM,
//! our stylesheet (inline, by its hash) and connections to our own origin; no framing by anyone
//! (`frame-ancestors 'none'`: the launch button cannot be clickjacked); and no content-type
//! sniffing. On every response of both apps: a page sets its own policy, with its nonce
//! (`app::shell`); every other response gets the policy without one.

use base64::Engine;
use http::{header, HeaderValue};
use sha2::{Digest, Sha256};
use tower_http::set_header::SetResponseHeaderLayer;

/// An inline script's or stylesheet's CSP source, `'sha256-<base64>'`: made once per bundle,
/// when the server starts, not per page.
pub fn inline_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The policy for pages whose inline scripts are the one of `loader_hash` (the island loader,
/// [`inline_hash`]) and those that carry `nonce` (Leptos's, on a page's response), and whose
/// inline stylesheet is the one of `style_hash`.
pub fn content_security_policy(
    loader_hash: &str,
    style_hash: &str,
    nonce: Option<&str>,
) -> HeaderValue {
    let nonce = nonce.map(|n| format!(" 'nonce-{n}'")).unwrap_or_default();
    let policy = format!(
        "default-src 'self'; \
         script-src 'self' {loader_hash}{nonce} 'wasm-unsafe-eval'; \
         style-src 'self' {style_hash}; img-src 'self' data:; connect-src 'self'; \
         object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
    );
    // A nonce is base64: the policy stays ASCII.
    HeaderValue::try_from(policy).expect("a policy of ASCII")
}

/// The three headers, as layers for the whole router.
pub fn layers(
    loader_hash: &str,
    style_hash: &str,
) -> (
    SetResponseHeaderLayer<HeaderValue>,
    SetResponseHeaderLayer<HeaderValue>,
    SetResponseHeaderLayer<HeaderValue>,
) {
    (
        SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            content_security_policy(loader_hash, style_hash, None),
        ),
        SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        // For browsers that predate `frame-ancestors`.
        SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_loader_and_the_stylesheet_by_their_hashes_and_nothing_inline_or_framed(
    ) {
        let loader = inline_hash("(() => {})()");
        let style = inline_hash("body{margin:0}");
        let policy = content_security_policy(&loader, &style, None);
        let policy = policy.to_str().unwrap();
        // printf '%s' '(() => {})()' | openssl dgst -sha256 -binary | base64
        let hash = "+qSgJuHoYUWwnMpdodufkhkdl0E/jO6LXjkRpVf3Znk=";
        assert_eq!(loader, format!("'sha256-{hash}'"));
        assert!(
            policy.contains(&format!("script-src 'self' {loader} ")),
            "{policy}"
        );
        assert!(
            policy.contains(&format!("style-src 'self' {style};")),
            "{policy}"
        );
        assert!(!policy.contains("unsafe-inline"), "{policy}");
        assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
        assert!(policy.contains("'wasm-unsafe-eval'"), "{policy}");
        // Another script gets another hash.
        assert_ne!(inline_hash("alert(1)"), loader);
        // A page's nonce allows the scripts that carry it, beside the loader.
        let paged = content_security_policy(&loader, &style, Some("bm9uY2U"));
        assert!(paged.to_str().unwrap().contains(&format!(
            "'sha256-{hash}' 'nonce-bm9uY2U' 'wasm-unsafe-eval'"
        )));
    }
}
