//! The upstream identity provider of the login tests (npm `oidc-provider`,
//! run by `tests/upstream/provider.mjs`), and a driver that completes its
//! login and consent forms over HTTP the way a browser would.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const CLIENT_SECRET: &str = "monoskope-test-secret";

/// Accounts of the provider: e-mail, name, verified, groups.
pub const ACCOUNTS: &str = r#"{
  "admin@example.com": {"name": "Ada Admin", "email_verified": true, "groups": ["platform-admins"]},
  "jane@example.com": {"name": "Jane Doe", "email_verified": true, "groups": ["developers"]},
  "unverified@example.com": {"name": "Una Verified", "email_verified": false, "groups": ["developers"]}
}"#;

/// A running provider process.
pub struct UpstreamProvider {
    pub issuer: String,
    pub port: u16,
    child: Child,
}

fn upstream_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/upstream")
}

/// Returns whether `node` and the provider's `node_modules` are installed.
pub fn available() -> bool {
    let node = Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    node && upstream_dir().join("node_modules/oidc-provider").is_dir()
}

impl UpstreamProvider {
    pub fn start(dir: &Path, tamper_audience: bool) -> Self {
        let port = super::free_port();
        let accounts = dir.join("accounts.json");
        std::fs::write(&accounts, ACCOUNTS).unwrap();

        let mut command = Command::new("node");
        command
            .arg(upstream_dir().join("provider.mjs"))
            .args(["--port", &port.to_string(), "--secret", CLIENT_SECRET, "--accounts"])
            .arg(&accounts)
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if tamper_audience {
            command.arg("--tamper-audience");
        }
        let mut child = command.spawn().expect("node starts");

        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.starts_with("ready "), "provider did not start: {line:?}");
        Self { issuer: format!("http://127.0.0.1:{port}"), port, child }
    }

    /// Writes the `upstream` section of a Monoskope configuration.
    pub fn config_section(&self, dir: &Path) -> String {
        let secret = dir.join("client-secret");
        std::fs::write(&secret, CLIENT_SECRET).unwrap();
        format!(
            "upstream:\n  issuer: {}\n  clientID: monoskope\n  clientSecretFile: {}\n  scopes: [openid, email, profile, groups]\n  groupsClaim: groups\n",
            self.issuer,
            secret.display()
        )
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for UpstreamProvider {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Follows an authorization URL through the provider's login and consent
/// forms as `user`, and returns the final redirect to the callback, without
/// requesting it.
pub fn complete_login(authorization_url: &str, user: &str) -> String {
    let browser = reqwest::blocking::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let mut next = authorization_url.to_string();
    for _ in 0..20 {
        if next.contains("/callback?") {
            return next;
        }
        let response = browser.get(&next).send().unwrap();
        if response.status().is_redirection() {
            next = resolve(&next, response.headers()["location"].to_str().unwrap());
            continue;
        }

        let page = response.text().unwrap();
        let action = resolve(&next, form_action(&page).unwrap_or_else(|| panic!("no form on {next}:\n{page}")));
        let form: Vec<(&str, &str)> = if page.contains("name=\"login\"") {
            vec![("prompt", "login"), ("login", user), ("password", "any")]
        } else {
            vec![("prompt", "consent")]
        };
        let submitted = browser.post(&action).form(&form).send().unwrap();
        assert!(submitted.status().is_redirection(), "form post to {action} answered {}", submitted.status());
        next = resolve(&action, submitted.headers()["location"].to_str().unwrap());
    }
    panic!("login did not reach the callback; last URL {next}");
}

fn form_action(page: &str) -> Option<&str> {
    let start = page.find("action=\"")? + "action=\"".len();
    let end = page[start..].find('"')?;
    Some(&page[start..start + end])
}

fn resolve(base: &str, location: &str) -> String {
    url::Url::parse(base).unwrap().join(location).unwrap().to_string()
}
