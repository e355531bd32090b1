//! Docker's volume plugin protocol: the request and response bodies, with Docker's exact
//! JSON field names.
//!
//! Every call is an HTTP `POST /<Method>` with a JSON body (possibly empty for
//! `Plugin.Activate`, `VolumeDriver.List` and `VolumeDriver.Capabilities`). Responses carry
//! the content type [`CONTENT_TYPE`]. Failures are reported in `Err`; an empty or absent
//! `Err` means success.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The content type of every response.
pub const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1+json";

/// The interface this plugin implements, as answered to `/Plugin.Activate`.
pub const IMPLEMENTS: &str = "VolumeDriver";

/// Body of `/VolumeDriver.Create`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct CreateRequest {
    /// The volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Driver options (`docker volume create -o k=v`, compose `driver_opts`). Docker sends
    /// `null` when there are none.
    #[serde(rename = "Opts", default)]
    pub opts: Option<BTreeMap<String, String>>,
}

/// Body of `/VolumeDriver.Remove`, `.Path` and `.Get`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct NameRequest {
    /// The volume name.
    #[serde(rename = "Name")]
    pub name: String,
}

/// Body of `/VolumeDriver.Mount` and `.Unmount`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct MountRequest {
    /// The volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// A unique id per mount (Docker uses the container id); refcounts are kept per id.
    #[serde(rename = "ID", default)]
    pub id: String,
}

/// Answer to `/Plugin.Activate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    /// The plugin interfaces implemented: `["VolumeDriver"]`.
    #[serde(rename = "Implements")]
    pub implements: Vec<String>,
}

/// Answer to calls that return nothing but a possible error (Create, Remove, Unmount).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrResponse {
    /// Empty on success.
    #[serde(rename = "Err", default)]
    pub err: String,
}

/// Answer to `/VolumeDriver.Mount` and `.Path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountpointResponse {
    /// Host path of the mounted filesystem; empty when not mounted (Path) or on error.
    #[serde(rename = "Mountpoint", default)]
    pub mountpoint: String,
    /// Empty on success.
    #[serde(rename = "Err", default)]
    pub err: String,
}

/// One volume as Docker sees it (in `Get` and `List`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Volume {
    /// The volume name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Host path when mounted on this node.
    #[serde(
        rename = "Mountpoint",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub mountpoint: String,
    /// Creation time, RFC 3339 in UTC.
    #[serde(rename = "CreatedAt", default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// Free-form details shown by `docker volume inspect`.
    #[serde(rename = "Status", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status: BTreeMap<String, serde_json::Value>,
}

/// Answer to `/VolumeDriver.Get`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetResponse {
    /// The volume; absent on error.
    #[serde(rename = "Volume", default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<Volume>,
    /// Empty on success.
    #[serde(rename = "Err", default)]
    pub err: String,
}

/// Answer to `/VolumeDriver.List`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListResponse {
    /// Every volume of the cluster this driver serves.
    #[serde(rename = "Volumes", default)]
    pub volumes: Vec<Volume>,
    /// Empty on success.
    #[serde(rename = "Err", default)]
    pub err: String,
}

/// The `Capabilities` object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// `global`: a volume is the same object on every node of the cluster.
    #[serde(rename = "Scope")]
    pub scope: String,
}

/// Answer to `/VolumeDriver.Capabilities`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    /// The driver's capabilities.
    #[serde(rename = "Capabilities")]
    pub capabilities: Capabilities,
}

/// The endpoints of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Endpoint {
    /// `/Plugin.Activate`
    Activate,
    /// `/VolumeDriver.Create`
    Create,
    /// `/VolumeDriver.Remove`
    Remove,
    /// `/VolumeDriver.Mount`
    Mount,
    /// `/VolumeDriver.Unmount`
    Unmount,
    /// `/VolumeDriver.Path`
    Path,
    /// `/VolumeDriver.Get`
    Get,
    /// `/VolumeDriver.List`
    List,
    /// `/VolumeDriver.Capabilities`
    Capabilities,
}

impl Endpoint {
    /// Every endpoint.
    pub const ALL: [Endpoint; 9] = [
        Endpoint::Activate,
        Endpoint::Create,
        Endpoint::Remove,
        Endpoint::Mount,
        Endpoint::Unmount,
        Endpoint::Path,
        Endpoint::Get,
        Endpoint::List,
        Endpoint::Capabilities,
    ];

    /// The HTTP path, e.g. `/VolumeDriver.Mount`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Activate => "/Plugin.Activate",
            Endpoint::Create => "/VolumeDriver.Create",
            Endpoint::Remove => "/VolumeDriver.Remove",
            Endpoint::Mount => "/VolumeDriver.Mount",
            Endpoint::Unmount => "/VolumeDriver.Unmount",
            Endpoint::Path => "/VolumeDriver.Path",
            Endpoint::Get => "/VolumeDriver.Get",
            Endpoint::List => "/VolumeDriver.List",
            Endpoint::Capabilities => "/VolumeDriver.Capabilities",
        }
    }

    /// The method name without the leading slash, e.g. `VolumeDriver.Mount`.
    pub fn method(self) -> &'static str {
        &self.path()[1..]
    }

    /// The endpoint served at `path`, if any.
    pub fn from_path(path: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.path() == path)
    }

    /// True for the calls that only read (List, Get, Path, and the two constant ones).
    pub fn is_read_only(self) -> bool {
        matches!(
            self,
            Endpoint::Activate
                | Endpoint::Capabilities
                | Endpoint::Path
                | Endpoint::Get
                | Endpoint::List
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_accepts_null_and_missing_opts() {
        let r: CreateRequest = serde_json::from_str(r#"{"Name":"v1","Opts":null}"#).unwrap();
        assert_eq!(r.name, "v1");
        assert_eq!(r.opts, None);
        let r: CreateRequest = serde_json::from_str(r#"{"Name":"v1"}"#).unwrap();
        assert_eq!(r.opts, None);
        let r: CreateRequest =
            serde_json::from_str(r#"{"Name":"v1","Opts":{"size":"2G"}}"#).unwrap();
        assert_eq!(r.opts.unwrap()["size"], "2G");
    }

    #[test]
    fn field_names_are_dockers() {
        let m: MountRequest = serde_json::from_str(r#"{"Name":"v","ID":"abc"}"#).unwrap();
        assert_eq!(m.id, "abc");
        let v = serde_json::to_value(GetResponse {
            volume: Some(Volume {
                name: "v".into(),
                mountpoint: "/m".into(),
                created_at: Some("2024-01-02T03:04:05Z".into()),
                status: BTreeMap::from([("k".to_string(), serde_json::json!(1))]),
            }),
            err: String::new(),
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Volume": {"Name": "v", "Mountpoint": "/m",
                "CreatedAt": "2024-01-02T03:04:05Z", "Status": {"k": 1}}, "Err": ""})
        );
        let v = serde_json::to_value(CapabilitiesResponse {
            capabilities: Capabilities {
                scope: "global".into(),
            },
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"Capabilities": {"Scope": "global"}}));
    }

    #[test]
    fn endpoints_round_trip() {
        for e in Endpoint::ALL {
            assert_eq!(Endpoint::from_path(e.path()), Some(e));
            assert!(e.method().contains('.'));
        }
        assert_eq!(Endpoint::from_path("/VolumeDriver.Nope"), None);
    }
}
