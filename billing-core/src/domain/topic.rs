//! What clients and the vendor hear about: one name per kind of change. A
//! topic is written on each outbox row, is the SSE `event:` name, and is the
//! vendor webhooks' event type (`type`, and what an endpoint subscribes to).
//! The strings are public contract: a renamed one is a broken client.

use std::fmt;

/// The kind of an outbox event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// `license.created`: a license was issued (from Stripe or by an admin).
    LicenseCreated,
    /// `license.updated`: a license's terms changed (plan, limit, status).
    LicenseUpdated,
    /// `subscription.updated`: the Stripe subscription behind a license changed.
    SubscriptionUpdated,
    /// `payment.updated`: a payment of the subscription failed or changed.
    PaymentUpdated,
    /// `device.activated`: a device took a slot, or came back to one.
    DeviceActivated,
    /// `device.updated`: a device was renamed.
    DeviceUpdated,
    /// `device.deactivated`: a device gave up its slot (app, dashboard,
    /// admin or a downgrade's eviction).
    DeviceDeactivated,
    /// `device.dead`: a device missed its heartbeat window.
    DeviceDead,
}

impl Topic {
    /// Every topic, in the order the API documents them.
    pub const ALL: [Topic; 8] = [
        Self::LicenseCreated,
        Self::LicenseUpdated,
        Self::SubscriptionUpdated,
        Self::PaymentUpdated,
        Self::DeviceActivated,
        Self::DeviceUpdated,
        Self::DeviceDeactivated,
        Self::DeviceDead,
    ];

    /// The wire names of [`Topic::ALL`], in its order.
    pub const NAMES: &'static [&'static str] = &{
        let mut names = [""; Self::ALL.len()];
        let mut i = 0;
        while i < names.len() {
            names[i] = Self::ALL[i].as_str();
            i += 1;
        }
        names
    };

    /// The wire name, e.g. `license.updated`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::LicenseCreated => "license.created",
            Self::LicenseUpdated => "license.updated",
            Self::SubscriptionUpdated => "subscription.updated",
            Self::PaymentUpdated => "payment.updated",
            Self::DeviceActivated => "device.activated",
            Self::DeviceUpdated => "device.updated",
            Self::DeviceDeactivated => "device.deactivated",
            Self::DeviceDead => "device.dead",
        }
    }

    /// The topic of a wire name; None for a name we never send.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|topic| topic.as_str() == name)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Topic {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Self::parse(&name).ok_or_else(|| serde::de::Error::unknown_variant(&name, Self::NAMES))
    }
}

#[cfg(test)]
mod tests {
    use super::Topic;

    #[test]
    fn wire_names_are_the_documented_ones() {
        // Spelled out rather than derived: these strings are what clients,
        // stored endpoint filters and old outbox rows already hold.
        let names: Vec<&str> = Topic::ALL.iter().map(|t| t.as_str()).collect();
        assert_eq!(names, Topic::NAMES);
        assert_eq!(
            names,
            [
                "license.created",
                "license.updated",
                "subscription.updated",
                "payment.updated",
                "device.activated",
                "device.updated",
                "device.deactivated",
                "device.dead",
            ]
        );
    }

    #[test]
    fn names_parse_back_and_unknown_ones_do_not() {
        for topic in Topic::ALL {
            assert_eq!(Topic::parse(topic.as_str()), Some(topic));
            assert_eq!(topic.to_string(), topic.as_str());
        }
        for unknown in ["", "*", "license", "License.Updated", "license.updated ", "license.deleted"] {
            assert_eq!(Topic::parse(unknown), None, "{unknown:?}");
        }
    }

    #[test]
    fn serde_uses_the_wire_name() {
        for topic in Topic::ALL {
            let json = serde_json::to_string(&topic).unwrap();
            assert_eq!(json, format!("\"{}\"", topic.as_str()));
            assert_eq!(serde_json::from_str::<Topic>(&json).unwrap(), topic);
        }
        let error = serde_json::from_str::<Topic>("\"coupon.applied\"").unwrap_err().to_string();
        assert!(error.contains("coupon.applied") && error.contains("license.updated"), "{error}");
    }
}
