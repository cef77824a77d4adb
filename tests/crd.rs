//! The checked-in CRD must equal what the types generate.

use kube::CustomResourceExt;
use monoskope::resource::MonoskopeCluster;

#[test]
fn checked_in_crd_matches_types() {
    let generated = serde_yaml_ng::to_string(&MonoskopeCluster::crd()).expect("CRD serializes");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/monoskopecluster.yaml");
    let checked_in = std::fs::read_to_string(path).expect("crds/monoskopecluster.yaml exists");
    assert!(
        generated == checked_in,
        "crds/monoskopecluster.yaml is out of date: run `cargo run --bin monoskope -- crd > crds/monoskopecluster.yaml`"
    );
}

#[test]
fn crd_names_and_columns() {
    let crd = MonoskopeCluster::crd();
    assert_eq!(crd.metadata.name.as_deref(), Some("monoskopeclusters.monoskope.io"));
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.short_names, Some(vec!["m8c".to_string()]));

    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some(), "status subresource");
    let columns: Vec<&str> = version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(columns, ["Cluster", "API Server", "Ready", "Age"]);
}

/// API servers of 1.25 and later enforce the CEL rules on apply; these tests
/// evaluate the same rules with kube's CEL interpreter.
mod cel_rules {
    use super::*;

    fn example() -> MonoskopeCluster {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/clusters/test-cluster.yaml");
        serde_yaml_ng::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn example_passes() {
        let cluster = example();
        assert!(cluster.validate_cel().is_ok(), "{:?}", cluster.validate_cel());
        assert!(cluster.validate_cel_update(&cluster).is_ok());
    }

    #[test]
    fn lifetime_out_of_bounds_rejected() {
        for lifetime in ["30s", "25h"] {
            let mut cluster = example();
            cluster.spec.roles[0].token_lifetime = lifetime.into();
            let err = cluster.validate_cel().expect_err(lifetime);
            assert!(format!("{err:?}").contains("tokenLifetime must be between 1m and 24h"), "{err:?}");
        }
    }

    #[test]
    fn plain_http_address_rejected() {
        let mut cluster = example();
        cluster.spec.api_server_address = "http://api.example.com".into();
        let err = cluster.validate_cel().expect_err("http rejected");
        assert!(format!("{err:?}").contains("https URL"), "{err:?}");
    }

    #[test]
    fn cluster_name_is_immutable() {
        let old = example();
        let mut renamed = example();
        renamed.spec.cluster_name = Some("other".into());
        let err = renamed.validate_cel_update(&old).expect_err("rename rejected");
        assert!(format!("{err:?}").contains("clusterName is immutable"), "{err:?}");

        let mut removed = example();
        removed.spec.cluster_name = None;
        assert!(removed.validate_cel_update(&old).is_err());
    }
}
