//! Generates the feature server's gRPC messages and service from
//! `proto/quiver/serving/v1/serving.proto` (protox: no protoc needed). The same messages
//! carry the HTTP JSON API: serde derives are added here, and `Value`, `ValueList` and
//! the status maps get hand-written JSON forms in `api`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/quiver/serving/v1/serving.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::compile([proto], ["proto"])?;
    let serde =
        "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default, deny_unknown_fields)]";
    let mut b = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .btree_map(".");
    for m in [
        "GetOnlineFeaturesRequest",
        "GetOnlineFeaturesResponse",
        "FeatureVector",
        "ResponseMetadata",
        "PushRequest",
        "PushResponse",
        "HealthRequest",
        "HealthResponse",
    ] {
        b = b.type_attribute(format!(".quiver.serving.v1.{m}"), serde);
    }
    b = b
        .type_attribute(
            ".quiver.serving.v1.ValueList",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(transparent)]",
        )
        .field_attribute(
            ".quiver.serving.v1.FeatureVector.statuses",
            "#[serde(with = \"crate::api::status_map\")]",
        );
    // Request columns given twice are an error, not last-wins (JSON only: protobuf maps
    // are last-wins by definition).
    for field in [
        "GetOnlineFeaturesRequest.entities",
        "GetOnlineFeaturesRequest.request_context",
        "PushRequest.data",
    ] {
        b = b.field_attribute(
            format!(".quiver.serving.v1.{field}"),
            "#[serde(deserialize_with = \"crate::api::unique_keys\")]",
        );
    }
    b.compile_fds(fds)?;
    Ok(())
}
