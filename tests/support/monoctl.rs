//! `monoctl` run as a user would, with its own home, configuration and
//! cache directories.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::TestServer;
use super::upstream::complete_login;

/// monoctl with its own home, configuration and cache directories.
pub struct Monoctl {
    pub home: tempfile::TempDir,
    pub server: String,
    pub ca_file: PathBuf,
}

impl Monoctl {
    pub fn new(server: &TestServer) -> Self {
        Self { home: tempfile::tempdir().unwrap(), server: server.issuer.clone(), ca_file: server.tls.ca_file.clone() }
    }

    pub fn cache_dir(&self) -> PathBuf {
        self.home.path().join("cache")
    }

    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_monoctl"));
        command
            .env("HOME", self.home.path())
            .env("MONOCTL_CONFIG", self.home.path().join("monoctl.yaml"))
            .env("MONOCTL_CACHE_DIR", self.cache_dir())
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_EXEC_INFO")
            .env_remove("MONOCTL_SERVER");
        command
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs `monoctl login --no-browser`, completes the printed URL as
    /// `user`, lets the provider redirect to monoctl's callback, and returns
    /// monoctl's output.
    pub fn login(&self, user: &str) -> Output {
        let mut child = self
            .command()
            .args(["login", "--no-browser", "--timeout", "30s", "--server", &self.server, "--ca-file"])
            .arg(&self.ca_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut printed = String::new();
        let url = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                let output = child.wait_with_output().unwrap();
                panic!("monoctl printed no URL: {printed}{}", String::from_utf8_lossy(&output.stdout));
            }
            printed.push_str(&line);
            if line.trim().starts_with("http") {
                break line.trim().to_string();
            }
        };

        let callback = complete_login(&url, user);
        let page = reqwest::blocking::get(&callback).unwrap().text().unwrap();
        assert!(page.contains("Logged in") || page.contains("failed"), "{page}");

        let mut output = child.wait_with_output().unwrap();
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        output.stderr = format!("{printed}{rest}").into_bytes();
        output
    }

    pub fn session_files(&self) -> Vec<PathBuf> {
        files_in(&self.cache_dir().join("sessions"))
    }

    pub fn token_files(&self) -> Vec<PathBuf> {
        files_in(&self.cache_dir().join("tokens"))
            .into_iter()
            .filter(|p| !p.to_string_lossy().ends_with(".lock"))
            .collect()
    }
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|entries| entries.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
