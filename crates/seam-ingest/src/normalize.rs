//! Canonical forms of identifier values; the constructors are the only way to get a valid value.

use std::fmt;

use phonenumber::country::Id as Region;

/// An e-mail address, trimmed and lower-cased, with a plausible local part and domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_lowercase();
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err("is not an e-mail address (no @)".into());
        };
        if s.len() > 254 || local.is_empty() || local.len() > 64 {
            return Err(
                "is not a valid e-mail address (length of the local part or the whole)".into(),
            );
        }
        let local_ok = local
            .chars()
            .all(|c| c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        if !local_ok {
            return Err("is not a valid e-mail address (local part)".into());
        }
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_alphanumeric() || c == '-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && !tld.chars().all(|c| c.is_ascii_digit()));
        if !domain_ok {
            return Err("is not a valid e-mail address (domain)".into());
        }
        Ok(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A phone number in E.164 form (`+79123456789`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhoneE164(String);

impl PhoneE164 {
    /// Parses a phone number as people write it; numbers without a country code are read in `default_region`.
    pub fn parse(raw: &str, default_region: Option<Region>) -> Result<Self, String> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err("is empty".into());
        }
        let region = if trimmed.starts_with('+') || trimmed.starts_with("00") {
            None
        } else {
            default_region
        };
        let number = phonenumber::parse(region, trimmed).map_err(|_| {
            if region.is_none() && !trimmed.starts_with('+') {
                "is not a phone number in international form, and no default_region is configured"
                    .to_owned()
            } else {
                "is not a phone number".to_owned()
            }
        })?;
        if !phonenumber::is_valid(&number) {
            return Err("is not a valid phone number".into());
        }
        Ok(Self(
            number.format().mode(phonenumber::Mode::E164).to_string(),
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Reads a region code (`RU`, `DE`, `US`) as used by `default_region`.
pub fn parse_region(code: &str) -> Result<Region, String> {
    code.trim()
        .to_uppercase()
        .parse::<Region>()
        .map_err(|_| format!("{code:?} is not an ISO 3166-1 alpha-2 region code"))
}

impl fmt::Display for PhoneE164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Values SDKs and shop code send when they have no real identifier; they never identify anyone.
pub fn is_junk_identifier(value: &str) -> bool {
    let v = value.trim();
    if v.is_empty() {
        return true;
    }
    let lower = v.to_ascii_lowercase();
    if matches!(
        lower.as_str(),
        "null"
            | "undefined"
            | "anonymous"
            | "none"
            | "nil"
            | "nan"
            | "unknown"
            | "-1"
            | "[object object]"
            | "{}"
    ) {
        return true;
    }
    // 0, 000, 00000000-0000-0000-0000-000000000000 and the like.
    v.chars().all(|c| matches!(c, '0' | '-' | '_' | ' ')) && v.contains('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_and_lower_cased() {
        assert_eq!(
            EmailAddress::parse("  Anna.Petrova@Example.COM ")
                .unwrap()
                .as_str(),
            "anna.petrova@example.com"
        );
        for bad in [
            "anna",
            "anna@",
            "@example.com",
            "anna@example",
            "an na@example.com",
            "a..b@x.io",
            "a@-x.io",
        ] {
            assert!(EmailAddress::parse(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn phones_become_e164_with_the_default_region() {
        let ru = parse_region("RU").ok();
        assert_eq!(
            PhoneE164::parse("8 (912) 345-67-89", ru).unwrap().as_str(),
            "+79123456789"
        );
        assert_eq!(
            PhoneE164::parse("+7 912 345 67 89", None).unwrap().as_str(),
            "+79123456789"
        );
        assert_eq!(
            PhoneE164::parse("+44 20 7946 0958", ru).unwrap().as_str(),
            "+442079460958"
        );
        assert!(PhoneE164::parse("912", ru).is_err());
        assert!(PhoneE164::parse("8 (912) 345-67-89", None).is_err());
        assert!(parse_region("ZZ").is_err());
    }

    #[test]
    fn junk_identifiers_are_recognised() {
        for junk in [
            "",
            " ",
            "null",
            "NULL",
            "undefined",
            "anonymous",
            "0",
            "-1",
            "00000000-0000-0000-0000-000000000000",
        ] {
            assert!(is_junk_identifier(junk), "{junk:?} is junk");
        }
        for real in ["42", "a1b2", "user-0", "10", "anna@example.com"] {
            assert!(!is_junk_identifier(real), "{real:?} is real");
        }
    }
}
