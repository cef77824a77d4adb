//! Validation of a `MonoskopeCluster` that does not rely on an API server.
//!
//! The CRD schema rejects most of these problems on `kubectl apply`, but the
//! standalone mode reads manifests from files, and API servers older than
//! 1.25 drop CEL rules, so every resource is checked here before it reaches
//! the cluster registry.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use super::{MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME, MonoskopeCluster};

/// One invalid field: its path in the resource and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the field, such as `spec.roles[1].tokenLifetime`.
    pub field: String,
    /// Description of the problem and its fix.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Every problem found in one resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidCluster {
    pub errors: Vec<FieldError>,
}

impl fmt::Display for InvalidCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let messages: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        f.write_str(&messages.join("; "))
    }
}

/// Checks a resource against every rule of the schema, plus the ones CEL
/// cannot express. Returns all problems at once, so one edit can fix them.
pub fn validate(cluster: &MonoskopeCluster) -> Result<(), InvalidCluster> {
    let mut errors = Vec::new();
    let spec = &cluster.spec;

    match cluster.metadata.name.as_deref() {
        None | Some("") => errors.push(error("metadata.name", "is missing: every resource needs a name")),
        Some(_) => {}
    }

    let cluster_name = cluster.cluster_name();
    if !cluster_name.is_empty() && !is_dns_label(cluster_name) {
        errors.push(error(
            "spec.clusterName",
            format!("{cluster_name:?} is not a DNS label: use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"),
        ));
    }

    check_api_server_address(&spec.api_server_address, &mut errors);
    check_ca_bundle(&spec.ca_bundle, &mut errors);
    check_roles(cluster, &mut errors);

    if errors.is_empty() { Ok(()) } else { Err(InvalidCluster { errors }) }
}

/// Parses a role's `tokenLifetime` (a Go duration) and checks its bounds.
pub fn parse_token_lifetime(text: &str) -> Result<Duration, String> {
    let parsed: kube::core::Duration =
        text.parse().map_err(|err| format!("{text:?} is not a Go duration ({err}): write it like 5m, 1h or 12h"))?;
    if parsed.is_negative() {
        return Err(format!("{text:?} is negative: use a lifetime between 1m and 24h"));
    }

    let lifetime = Duration::from(parsed);
    if lifetime < MIN_TOKEN_LIFETIME || lifetime > MAX_TOKEN_LIFETIME {
        return Err(format!("{text:?} is out of range: use a lifetime between 1m and 24h"));
    }
    Ok(lifetime)
}

fn check_api_server_address(address: &str, errors: &mut Vec<FieldError>) {
    const FIELD: &str = "spec.apiServerAddress";
    match url::Url::parse(address) {
        Err(err) => errors.push(error(FIELD, format!("{address:?} is not a URL ({err}): use https://HOST[:PORT]"))),
        Ok(url) if url.scheme() != "https" => errors.push(error(
            FIELD,
            format!("{address:?} uses {}: kube-apiserver is reached over https only", url.scheme()),
        )),
        Ok(url) if url.host_str().is_none_or(str::is_empty) => {
            errors.push(error(FIELD, format!("{address:?} has no host: use https://HOST[:PORT]")))
        }
        Ok(url) if url.query().is_some() || url.fragment().is_some() => {
            errors.push(error(FIELD, format!("{address:?} has a query or fragment: use https://HOST[:PORT][/PATH]")))
        }
        Ok(_) => {}
    }
}

fn check_ca_bundle(bundle: &str, errors: &mut Vec<FieldError>) {
    const FIELD: &str = "spec.caBundle";
    let mut count = 0;

    for (index, block) in x509_parser::pem::Pem::iter_from_buffer(bundle.as_bytes()).enumerate() {
        let block = match block {
            Ok(block) => block,
            Err(err) => {
                errors.push(error(
                    FIELD,
                    format!("PEM block {} is malformed ({err}): paste the CA certificate's PEM text", index + 1),
                ));
                return;
            }
        };
        if block.label != "CERTIFICATE" {
            errors.push(error(
                FIELD,
                format!(
                    "PEM block {} is a {:?}, not a CERTIFICATE: the bundle must contain CA certificates only",
                    index + 1,
                    block.label
                ),
            ));
            return;
        }
        if let Err(err) = block.parse_x509() {
            errors.push(error(FIELD, format!("certificate {} is not valid X.509 ({err})", index + 1)));
            return;
        }
        count += 1;
    }

    if count == 0 {
        errors.push(error(
            FIELD,
            "contains no PEM certificate: paste the CA certificate that starts with -----BEGIN CERTIFICATE-----",
        ));
    }
}

fn check_roles(cluster: &MonoskopeCluster, errors: &mut Vec<FieldError>) {
    let mut seen = HashSet::new();

    for (index, role) in cluster.spec.roles.iter().enumerate() {
        let path = format!("spec.roles[{index}]");

        if !is_dns_label(&role.name) {
            errors.push(error(
                format!("{path}.name"),
                format!("{:?} is not a DNS label: use at most 63 lower-case letters, digits and '-'", role.name),
            ));
        }
        if !seen.insert(role.name.as_str()) {
            errors.push(error(
                format!("{path}.name"),
                format!("duplicate role {:?}: role names must be unique", role.name),
            ));
        }
        if role.cluster_role.trim().is_empty() {
            errors.push(error(
                format!("{path}.clusterRole"),
                "is empty: name the ClusterRole this role binds, such as view",
            ));
        }
        if let Err(message) = parse_token_lifetime(&role.token_lifetime) {
            errors.push(error(format!("{path}.tokenLifetime"), message));
        }
        for (sa_index, account) in role.subjects.service_accounts.iter().enumerate() {
            if parse_service_account(account).is_none() {
                errors.push(error(
                    format!("{path}.subjects.serviceAccounts[{sa_index}]"),
                    format!("{account:?} is not namespace/name"),
                ));
            }
        }
    }
}

/// Splits `namespace/name` into its two DNS-label parts.
pub fn parse_service_account(text: &str) -> Option<(&str, &str)> {
    let (namespace, name) = text.split_once('/')?;
    let name_ok = !name.is_empty() && name.len() <= 253 && name.split('.').all(is_dns_label);
    (is_dns_label(namespace) && name_ok).then_some((namespace, name))
}

fn is_dns_label(text: &str) -> bool {
    let bytes = text.as_bytes();
    let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(allowed)
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CA: &str = include_str!("../../examples/ca/example-ca.crt");

    fn cluster(yaml: &str) -> MonoskopeCluster {
        serde_yaml_ng::from_str(yaml).expect("test manifest parses")
    }

    fn manifest(spec_tail: &str) -> String {
        let ca = CA.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n");
        format!(
            "apiVersion: monoskope.io/v1alpha1\nkind: MonoskopeCluster\nmetadata: {{name: test-cluster}}\nspec:\n  apiServerAddress: https://api.test.example.com\n  caBundle: |\n{ca}\n{spec_tail}"
        )
    }

    fn fields(result: Result<(), InvalidCluster>) -> Vec<String> {
        result.err().map(|e| e.errors.into_iter().map(|f| f.field).collect()).unwrap_or_default()
    }

    #[test]
    fn valid_cluster_passes() {
        let c = cluster(&manifest("  roles:\n  - {name: default, clusterRole: view, tokenLifetime: 12h}\n"));
        assert_eq!(validate(&c), Ok(()));
        assert_eq!(c.spec.username_prefix, "m8:");
    }

    #[test]
    fn http_address_rejected() {
        let mut c = cluster(&manifest(""));
        c.spec.api_server_address = "http://api.example.com".into();
        assert_eq!(fields(validate(&c)), ["spec.apiServerAddress"]);
    }

    #[test]
    fn non_pem_ca_bundle_rejected() {
        let mut c = cluster(&manifest(""));
        c.spec.ca_bundle = "not a certificate".into();
        let err = validate(&c).unwrap_err();
        assert_eq!(err.errors[0].field, "spec.caBundle");
        assert!(err.errors[0].message.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn garbled_certificate_rejected() {
        let mut c = cluster(&manifest(""));
        c.spec.ca_bundle = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
        assert_eq!(fields(validate(&c)), ["spec.caBundle"]);
    }

    #[test]
    fn duplicate_role_rejected() {
        let c = cluster(&manifest(
            "  roles:\n  - {name: default, clusterRole: view}\n  - {name: default, clusterRole: edit}\n",
        ));
        assert_eq!(fields(validate(&c)), ["spec.roles[1].name"]);
    }

    #[test]
    fn lifetime_bounds_enforced() {
        for (text, ok) in [
            ("1m", true),
            ("24h", true),
            ("90s", true),
            ("59s", false),
            ("25h", false),
            ("12", false),
            ("soon", false),
            ("-5m", false),
        ] {
            assert_eq!(parse_token_lifetime(text).is_ok(), ok, "{text}");
        }
    }

    #[test]
    fn bad_lifetime_names_role() {
        let c = cluster(&manifest("  roles:\n  - {name: admin, clusterRole: cluster-admin, tokenLifetime: 2d}\n"));
        let err = validate(&c).unwrap_err();
        assert_eq!(err.errors[0].field, "spec.roles[0].tokenLifetime");
        assert!(err.errors[0].message.contains("\"2d\""), "{err}");
    }

    #[test]
    fn bad_names_rejected() {
        let c = cluster(&manifest(
            "  clusterName: Test_Cluster\n  roles:\n  - {name: Admin, clusterRole: x, subjects: {serviceAccounts: [nonamespace]}}\n",
        ));
        assert_eq!(
            fields(validate(&c)),
            ["spec.clusterName", "spec.roles[0].name", "spec.roles[0].subjects.serviceAccounts[0]"]
        );
    }

    #[test]
    fn service_account_parsing() {
        assert_eq!(parse_service_account("ci/deployer"), Some(("ci", "deployer")));
        assert_eq!(parse_service_account("ci/"), None);
        assert_eq!(parse_service_account("/x"), None);
    }
}
