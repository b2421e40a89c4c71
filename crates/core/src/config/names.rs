//! Extended-resource names: the kubelet's validity rule and NVIDIA's
//! `nvidia.com/` defaulting.

use super::schema::{InvalidValue, ResourceName};

/// Prefix NVIDIA prepends to a resource name that has none.
pub const DEFAULT_PREFIX: &str = "nvidia.com";

/// The whole-GPU resource (and what time-slicing and MPS replicas are
/// advertised as without `renameByDefault`).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

/// What `renameByDefault: true` appends to a shared resource's name.
pub const SHARED_SUFFIX: &str = ".shared";

/// `nvidia.com/gpu` shared under `renameByDefault: true`.
pub const SHARED_GPU_RESOURCE: &str = "nvidia.com/gpu.shared";

/// Prefix of the resources MIG devices are advertised as under
/// `migStrategy: mixed`.
pub const MIG_RESOURCE_PREFIX: &str = "nvidia.com/mig-";

/// The resource a MIG profile is advertised as under `migStrategy: mixed`,
/// as NVIDIA's plugin names it: `+` becomes `.` (`1g.10gb+me` →
/// `nvidia.com/mig-1g.10gb.me`). A `mig-` prefix on `profile` is ignored.
pub fn mig_resource(profile: &str) -> String {
    let profile = profile.trim().trim_start_matches("mig-");
    format!("{MIG_RESOURCE_PREFIX}{}", profile.replace('+', "."))
}

/// The profile a MIG resource stands for, as the name writes it
/// (`nvidia.com/mig-1g.10gb.me` → `1g.10gb.me`); `None` for other
/// resources.
pub fn mig_profile_of(resource: &str) -> Option<&str> {
    resource.strip_prefix(MIG_RESOURCE_PREFIX)
}

/// Whether a resource is NVIDIA's (`nvidia.com/…`): whole, shared or MIG
/// GPUs, or any other device NVIDIA's plugins advertise.
pub fn is_nvidia_resource(resource: &str) -> bool {
    resource
        .strip_prefix(DEFAULT_PREFIX)
        .is_some_and(|rest| rest.starts_with('/'))
}

/// NVIDIA's limit on the fully-qualified resource name.
pub const MAX_RESOURCE_NAME_LENGTH: usize = 63;

const QUALIFIED_NAME_FMT: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', \
     and must start and end with an alphanumeric character (e.g. 'MyName', or 'my.name', or '123-abc', \
     regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

const DNS1123_SUBDOMAIN_FMT: &str = "prefix part a lowercase RFC 1123 subdomain must consist of lower case \
     alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character \
     (e.g. 'example.com', regex used for validation is \
     '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";

/// The kubelet's extended-resource-name rule (`IsExtendedResourceName`):
/// `<prefix>/<name>` where the prefix is a lowercase DNS-1123 subdomain of at
/// most 253 characters that is not `kubernetes.io`-owned, the whole name does
/// not start with `requests.`, and the name part is at most 63 characters of
/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`.
///
/// The error explains what is wrong (without repeating the name).
pub fn validate_resource_name(full: &str) -> Result<(), InvalidValue> {
    let Some((prefix, name)) = full.split_once('/') else {
        return Err(InvalidValue(
            "an extended resource name must be of the form '<domain>/<name>'".into(),
        ));
    };
    if full.contains("kubernetes.io/") {
        return Err(
            "the kubernetes.io/ prefix is reserved for native resources, not extended resources"
                .into(),
        );
    }
    if full.starts_with("requests.") {
        return Err(InvalidValue(
            "an extended resource name must not start with 'requests.'".into(),
        ));
    }
    if name.contains('/') {
        return Err(InvalidValue(
            "a qualified name must contain at most one '/'".into(),
        ));
    }
    if prefix.is_empty() {
        return Err(InvalidValue("prefix part must be non-empty".into()));
    }
    if prefix.len() > 253 {
        return Err(InvalidValue(
            "prefix part must be no more than 253 characters".into(),
        ));
    }
    if !is_dns1123_subdomain(prefix) {
        return Err(DNS1123_SUBDOMAIN_FMT.into());
    }
    if name.is_empty() {
        return Err(InvalidValue("name part must be non-empty".into()));
    }
    if name.len() > 63 {
        return Err(InvalidValue(
            "name part must be no more than 63 characters".into(),
        ));
    }
    if !is_qualified_name_part(name) {
        return Err(QUALIFIED_NAME_FMT.into());
    }
    Ok(())
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*`
fn is_dns1123_subdomain(s: &str) -> bool {
    s.split('.').all(|label| {
        let bytes = label.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        match (bytes.first(), bytes.last()) {
            (Some(first), Some(last)) => {
                alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
            }
            _ => false,
        }
    })
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_qualified_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

impl ResourceName {
    /// Parses a user-supplied resource name the way NVIDIA does: `nvidia.com/`
    /// is prepended when there is no `/`; the full name must be at most 63
    /// characters (`fully-qualified resource name must be 63 characters or
    /// less: <name>`) and a valid extended resource name (`incorrect format
    /// for resource name '<name>': [<why>]`).
    pub fn parse(raw: &str) -> Result<ResourceName, InvalidValue> {
        let full = if raw.contains('/') {
            raw.to_string()
        } else {
            format!("{DEFAULT_PREFIX}/{raw}")
        };
        if full.len() > MAX_RESOURCE_NAME_LENGTH {
            return Err(InvalidValue(format!(
                "fully-qualified resource name must be {MAX_RESOURCE_NAME_LENGTH} characters or less: {full}"
            )));
        }
        validate_resource_name(&full)
            .map_err(|why| format!("incorrect format for resource name '{full}': [{why}]"))?;
        Ok(ResourceName::new_unchecked(full))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nvidia_resources_are_those_under_nvidia_com() {
        for r in [
            "nvidia.com/gpu",
            "nvidia.com/gpu.shared",
            "nvidia.com/mig-1g.10gb.me",
        ] {
            assert!(is_nvidia_resource(r), "{r}");
        }
        for r in ["nvidia.comx/gpu", "amd.com/gpu", "nvidia.com", "cpu"] {
            assert!(!is_nvidia_resource(r), "{r}");
        }
    }

    #[test]
    fn mig_resources_are_named_as_nvidia_names_them() {
        for (profile, resource) in [
            ("1g.10gb", "nvidia.com/mig-1g.10gb"),
            ("1g.10gb+me", "nvidia.com/mig-1g.10gb.me"),
            ("mig-1g.10gb+me", "nvidia.com/mig-1g.10gb.me"),
            ("1g.10gb.me", "nvidia.com/mig-1g.10gb.me"),
            ("1c.3g.20gb", "nvidia.com/mig-1c.3g.20gb"),
        ] {
            assert_eq!(mig_resource(profile), resource, "{profile}");
            assert_eq!(validate_resource_name(resource), Ok(()), "{resource}");
        }
        assert_eq!(
            mig_profile_of("nvidia.com/mig-1g.10gb.me"),
            Some("1g.10gb.me")
        );
        assert_eq!(mig_profile_of(GPU_RESOURCE), None);
        assert_eq!(
            format!("{GPU_RESOURCE}{SHARED_SUFFIX}"),
            SHARED_GPU_RESOURCE
        );
    }

    #[test]
    fn valid_names() {
        for name in [
            "nvidia.com/gpu",
            "nvidia.com/gpu.shared",
            "nvidia.com/mig-1g.10gb.me",
            "nvidia.com/mig-1g.24gb-me",
            "example.com/My_Name",
            "a/b",
        ] {
            assert_eq!(validate_resource_name(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn invalid_names() {
        for (name, why) in [
            (
                "gpu",
                "an extended resource name must be of the form '<domain>/<name>'",
            ),
            (
                "kubernetes.io/gpu",
                "the kubernetes.io/ prefix is reserved for native resources, not extended resources",
            ),
            (
                "foo.kubernetes.io/gpu",
                "the kubernetes.io/ prefix is reserved for native resources, not extended resources",
            ),
            (
                "requests.nvidia.com/gpu",
                "an extended resource name must not start with 'requests.'",
            ),
            (
                "nvidia.com/a/b",
                "a qualified name must contain at most one '/'",
            ),
            ("/gpu", "prefix part must be non-empty"),
            ("Nvidia.com/gpu", DNS1123_SUBDOMAIN_FMT),
            ("nvidia..com/gpu", DNS1123_SUBDOMAIN_FMT),
            ("-nvidia.com/gpu", DNS1123_SUBDOMAIN_FMT),
            ("nvidia.com/", "name part must be non-empty"),
            ("nvidia.com/gpu-", QUALIFIED_NAME_FMT),
            ("nvidia.com/.gpu", QUALIFIED_NAME_FMT),
            ("nvidia.com/g pu", QUALIFIED_NAME_FMT),
            ("nvidia.com/g+pu", QUALIFIED_NAME_FMT),
        ] {
            assert_eq!(
                validate_resource_name(name),
                Err(InvalidValue(why.to_string())),
                "{name}"
            );
        }
        let long = format!("nvidia.com/{}", "a".repeat(64));
        assert_eq!(
            validate_resource_name(&long),
            Err("name part must be no more than 63 characters".into())
        );
        let long_prefix = format!("{}.com/gpu", "a".repeat(250));
        assert_eq!(
            validate_resource_name(&long_prefix),
            Err("prefix part must be no more than 253 characters".into())
        );
    }

    #[test]
    fn parse_prepends_prefix_and_checks_length() {
        assert_eq!(
            ResourceName::parse("gpu").unwrap().as_str(),
            "nvidia.com/gpu"
        );
        assert_eq!(
            ResourceName::parse("mig-1g.10gb").unwrap().as_str(),
            "nvidia.com/mig-1g.10gb"
        );
        assert_eq!(
            ResourceName::parse("example.com/gpu").unwrap().as_str(),
            "example.com/gpu"
        );
        let long = "a".repeat(53);
        assert_eq!(
            ResourceName::parse(&long).unwrap_err().to_string(),
            format!(
                "fully-qualified resource name must be 63 characters or less: nvidia.com/{long}"
            )
        );
        assert!(ResourceName::parse(&"a".repeat(52)).is_ok());
        assert_eq!(
            ResourceName::parse("gpu_").unwrap_err().to_string(),
            format!("incorrect format for resource name 'nvidia.com/gpu_': [{QUALIFIED_NAME_FMT}]")
        );
        assert_eq!(
            ResourceName::parse("").unwrap_err().to_string(),
            "incorrect format for resource name 'nvidia.com/': [name part must be non-empty]"
        );
    }
}
