//! `docs/openapi.yaml` lists exactly the routes of the router, each with its
//! responses and, where a bearer token is required, its `401`.
//!
//! The document is scanned line by line (no YAML parser): under `paths:`, a
//! line `  /…:` starts a path and a line `    get:` (post, put, patch, delete)
//! an operation; inside an operation, the six-space keys `security:` and
//! `responses:` open the lists read at eight spaces.

use billing_server::routes::{Route, ROUTES};
use std::collections::BTreeSet;

const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
const METHODS: &[&str] = &["get", "post", "put", "patch", "delete"];

/// One operation of the document.
#[derive(Debug)]
struct Operation {
    method: String,
    path: String,
    /// 1-based line of the method key.
    line: usize,
    /// Security scheme names of the operation's `security:` list.
    security: Vec<String>,
    /// Status codes (or `default`) under `responses:`.
    responses: Vec<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Section {
    Security,
    Responses,
    Other,
}

fn operations(document: &str) -> Vec<Operation> {
    let mut operations: Vec<Operation> = Vec::new();
    let mut in_paths = false;
    let mut path: Option<String> = None;
    let mut in_operation = false;
    let mut section = Section::Other;
    for (index, raw) in document.lines().enumerate() {
        let line = raw.trim_end();
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let indent = line.len() - trimmed.len();
        if indent == 0 {
            in_paths = line == "paths:";
            path = None;
            in_operation = false;
            continue;
        }
        if !in_paths {
            continue;
        }
        match indent {
            2 => {
                path = trimmed.strip_suffix(':').filter(|p| p.starts_with('/')).map(str::to_owned);
                in_operation = false;
            }
            4 => {
                let method = trimmed.strip_suffix(':').filter(|m| METHODS.contains(m));
                in_operation = false;
                section = Section::Other;
                if let (Some(path), Some(method)) = (&path, method) {
                    operations.push(Operation {
                        method: method.to_owned(),
                        path: path.clone(),
                        line: index + 1,
                        security: Vec::new(),
                        responses: Vec::new(),
                    });
                    in_operation = true;
                }
            }
            6 if in_operation => {
                section = match trimmed {
                    "responses:" => Section::Responses,
                    "security:" => Section::Security,
                    _ => Section::Other,
                };
            }
            8 if in_operation => {
                let operation = operations.last_mut().expect("in an operation");
                let key = |s: &str| s.split(':').next().unwrap_or_default().trim().trim_matches(['\'', '"']).to_owned();
                match section {
                    Section::Security => {
                        if let Some(requirement) = trimmed.strip_prefix("- ") {
                            operation.security.push(key(requirement));
                        }
                    }
                    Section::Responses => operation.responses.push(key(trimmed)),
                    Section::Other => {}
                }
            }
            _ => {}
        }
    }
    operations
}

/// The security schemes a route accepts (any one of them suffices).
fn expected_security(route: Route, path: &str) -> &'static [&'static str] {
    match route {
        Route::StripeWebhook => &["stripeSignature"],
        Route::Activate | Route::Trial | Route::Validate | Route::PublicKey => &[],
        // The customer portal (issue 19): the one-time code is the credential.
        Route::PortalSession => &[],
        Route::Heartbeat | Route::Deactivate => &["activationToken"],
        Route::Events => &["activationToken", "dashboardJwt"],
        _ if path.starts_with("/api/admin/") => &["adminToken"],
        // Operations routes (health, readiness, metrics) live outside /api/.
        _ if !path.starts_with("/api/") => &[],
        // The dashboard's reads, terminals and actions.
        _ => &["dashboardJwt"],
    }
}

fn is_status(code: &str) -> bool {
    code == "default"
        || matches!(code.as_bytes(), [b'1'..=b'5', rest @ ..] if rest.len() == 2
            && (rest.iter().all(u8::is_ascii_digit) || rest == b"XX"))
}

#[test]
fn openapi_document_lists_exactly_the_routes_of_the_router() {
    let document = std::fs::read_to_string(DOCUMENT).unwrap_or_else(|e| panic!("cannot read {DOCUMENT}: {e}"));
    assert!(document.starts_with("openapi: 3.1"), "{DOCUMENT} is not an OpenAPI 3.1 document");
    let operations = operations(&document);

    let routes: BTreeSet<(String, String)> =
        ROUTES.iter().map(|(method, path, _)| (method.as_str().to_lowercase(), (*path).to_owned())).collect();
    assert_eq!(routes.len(), ROUTES.len(), "ROUTES lists a (method, path) twice");
    let mut documented = BTreeSet::new();
    let mut duplicates = Vec::new();
    for op in &operations {
        if !documented.insert((op.method.clone(), op.path.clone())) {
            duplicates.push(format!("{} {} (line {})", op.method, op.path, op.line));
        }
    }
    let missing: Vec<String> = routes.difference(&documented).map(|(m, p)| format!("{m} {p}")).collect();
    let extra: Vec<String> = documented.difference(&routes).map(|(m, p)| format!("{m} {p}")).collect();
    assert!(
        missing.is_empty() && extra.is_empty() && duplicates.is_empty(),
        "docs/openapi.yaml disagrees with billing_server::routes::ROUTES\n\
         missing from the document (in ROUTES): {missing:#?}\n\
         extra in the document (not in ROUTES): {extra:#?}\n\
         documented twice: {duplicates:#?}"
    );

    let mut problems = Vec::new();
    for (method, path, route) in ROUTES {
        let method = method.as_str().to_lowercase();
        let op = operations.iter().find(|op| op.method == method && op.path == *path).expect("checked above");
        let at = format!("{method} {path} (line {})", op.line);
        if op.responses.is_empty() {
            problems.push(format!("{at}: documents no responses"));
        }
        for code in op.responses.iter().filter(|c| !is_status(c)) {
            problems.push(format!("{at}: `{code}` is not a status code"));
        }
        let expected: BTreeSet<&str> = expected_security(*route, path).iter().copied().collect();
        let declared: BTreeSet<&str> = op.security.iter().map(String::as_str).collect();
        if declared != expected {
            problems.push(format!("{at}: security is {declared:?}, expected {expected:?}"));
        }
        let bearer = expected.contains("dashboardJwt") || expected.contains("activationToken");
        let admin = expected.contains("adminToken");
        if (bearer || admin) && !op.responses.iter().any(|c| c == "401") {
            problems.push(format!("{at}: requires a bearer token but documents no 401"));
        }
        if admin && !op.responses.iter().any(|c| c == "403") {
            problems.push(format!("{at}: needs a scope but documents no 403 (INSUFFICIENT_SCOPE)"));
        }
    }
    assert!(problems.is_empty(), "docs/openapi.yaml is incomplete:\n{}", problems.join("\n"));
}
