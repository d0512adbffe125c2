//! The web console for auditors and citizens: static pages, scripts and a
//! style sheet, built into the binary (`include_bytes!` of
//! `crates/semel-http/console/`) and served by the HTTP/JSON face under
//! `/console/`. There is no build step: the files are the plain HTML,
//! JavaScript modules and CSS the browser runs. The console is a client of
//! the HTTP/JSON face: every datum it shows comes from the same routes, with
//! the same identity (the browser's client certificate and the person's
//! token) and the same permission rules, audit entries and limits.
//!
//! The files hold no data, so they are served without a certificate; the
//! calls they make are not.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Response, StatusCode};

/// Where the console is served.
pub const PREFIX: &str = "/console";

struct Asset {
    name: &'static str,
    body: &'static [u8],
    content_type: &'static str,
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            body: include_bytes!(concat!("../console/", $name)),
            content_type: $type,
        }
    };
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

const ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("citizen.html", HTML),
    asset!("api.js", JS),
    asset!("ui.js", JS),
    asset!("verify.js", JS),
    asset!("i18n.js", JS),
    asset!("console.js", JS),
    asset!("citizen.js", JS),
    asset!("style.css", "text/css; charset=utf-8"),
];

/// Scripts and styles from the console's own files only; no inline code,
/// no other origin. The auditor's pages are framed by no one; the
/// citizen's page by pages of the same origin (a portal serving the broker
/// behind its own address, see the operator guide).
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'";

/// The answer to a request under [`PREFIX`].
pub fn serve(method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "the console's files are read with GET",
        );
    }
    let name = match path.strip_prefix(PREFIX) {
        Some("") => {
            return Response::builder()
                .status(StatusCode::MOVED_PERMANENTLY)
                .header(hyper::header::LOCATION, "/console/")
                .body(Full::new(Bytes::new()))
                .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "no answer"));
        }
        Some("/") => "index.html",
        Some(rest) => rest.trim_start_matches('/'),
        None => "",
    };
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return plain(StatusCode::NOT_FOUND, "no such page in the console");
    };
    let frame = if asset.name == "citizen.html" {
        "frame-ancestors 'self'"
    } else {
        "frame-ancestors 'none'"
    };
    let body = if method == Method::HEAD {
        Bytes::new()
    } else {
        Bytes::from_static(asset.body)
    };
    let mut resp = Response::new(Full::new(body));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&format!("{CSP}; {frame}")) {
        h.insert("content-security-policy", v);
    }
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    if asset.content_type == HTML {
        h.insert(
            "x-frame-options",
            HeaderValue::from_static(if asset.name == "citizen.html" {
                "SAMEORIGIN"
            } else {
                "DENY"
            }),
        );
    }
    resp
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_its_type_and_policy() {
        for a in ASSETS {
            let resp = serve(&Method::GET, &format!("/console/{}", a.name));
            assert_eq!(resp.status(), StatusCode::OK, "{}", a.name);
            assert_eq!(resp.headers()[CONTENT_TYPE], a.content_type);
            let csp = resp.headers()["content-security-policy"]
                .to_str()
                .expect("ASCII");
            assert!(csp.contains("script-src 'self'"), "{csp}");
            assert!(!a.body.is_empty(), "{} is empty", a.name);
        }
        assert_eq!(
            serve(&Method::GET, "/console/").headers()[CONTENT_TYPE],
            HTML
        );
        assert_eq!(
            serve(&Method::GET, "/console").status(),
            StatusCode::MOVED_PERMANENTLY
        );
        assert_eq!(
            serve(&Method::GET, "/console/../Cargo.toml").status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            serve(&Method::POST, "/console/").status(),
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    /// The reason codes the search offers are codes the log records (the
    /// filter refuses any other).
    #[test]
    fn the_search_offers_real_reason_codes() {
        let page = std::str::from_utf8(include_bytes!("../console/index.html")).expect("UTF-8");
        let list = &page[page.find("<datalist id=\"reasons\">").expect("datalist")..];
        let list = &list[..list.find("</datalist>").expect("end")];
        let codes: Vec<&str> = list
            .split("<option value=\"")
            .skip(1)
            .map(|o| &o[..o.find('"').expect("quote")])
            .collect();
        assert!(codes.len() >= 10, "{codes:?}");
        for code in codes {
            assert!(
                semel_core::ReasonCode::parse(code).is_some(),
                "{code} is not a reason code"
            );
        }
    }

    /// Every script a page loads, and every module a script imports, is
    /// one the console serves; and no page runs inline script (the policy
    /// would refuse it).
    #[test]
    fn pages_load_only_served_files() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for a in ASSETS {
            let text = std::str::from_utf8(a.body).expect("UTF-8");
            for (i, _) in text.match_indices("src=\"") {
                let rest = &text[i + 5..];
                let file = &rest[..rest.find('"').expect("closing quote")];
                assert!(
                    names.contains(&file.trim_start_matches("./")),
                    "{} loads {file}",
                    a.name
                );
            }
            for (i, _) in text.match_indices("from \"./") {
                let rest = &text[i + 8..];
                let file = &rest[..rest.find('"').expect("closing quote")];
                assert!(names.contains(&file), "{} imports {file}", a.name);
            }
            if a.content_type == HTML {
                assert!(
                    !text.contains("<script>"),
                    "{} has an inline script",
                    a.name
                );
                for handler in ["onclick=", "onload=", "onsubmit=", "onchange=", "oninput="] {
                    assert!(!text.contains(handler), "{} has an inline handler", a.name);
                }
            }
        }
    }
}
