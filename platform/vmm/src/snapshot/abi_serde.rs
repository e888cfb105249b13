//! How a snapshot writes the types of other crates that carry no serde
//! derives of their own (the abi is `no_std` and dependency-free, and the
//! backend interface has no use for them): each as the bytes or fields
//! those crates already define.

/// `Option<GuestReport>` as its bytes ([`GuestReport::as_bytes`]).
pub(crate) mod report {
    use apflab_abi::report::GuestReport;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(crate) fn serialize<S: Serializer>(
        r: &Option<GuestReport>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        r.as_ref().map(|r| r.as_bytes().to_vec()).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<GuestReport>, D::Error> {
        Option::<Vec<u8>>::deserialize(d)?
            .map(|b| {
                GuestReport::from_bytes(&b)
                    .ok_or_else(|| serde::de::Error::custom("not a guest report"))
            })
            .transpose()
    }
}

/// The timeline's `(vCPU, TraceRecord)` pairs as `(vCPU, ticks, kind,
/// task, arg)`.
pub(crate) mod timeline {
    use apflab_abi::trace::TraceRecord;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Row = (u32, u64, u32, u32, u64);

    pub(crate) fn serialize<S: Serializer>(
        records: &[(u32, TraceRecord)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        records
            .iter()
            .map(|(v, r)| (*v, r.ticks, r.kind, r.task, r.arg))
            .collect::<Vec<Row>>()
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(u32, TraceRecord)>, D::Error> {
        Ok(Vec::<Row>::deserialize(d)?
            .into_iter()
            .map(|(v, ticks, kind, task, arg)| {
                (
                    v,
                    TraceRecord {
                        ticks,
                        kind,
                        task,
                        arg,
                    },
                )
            })
            .collect())
    }
}

/// The doorbell's waiting engine calls (`apflab-hypervisor`'s
/// `EngineCall`, which has no serde derives either) as `(function, args)`.
pub(crate) mod engine_calls {
    use apflab_hypervisor::EngineCall;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    type Call = (u32, [u64; 5]);

    pub(crate) fn serialize<S: Serializer>(
        calls: &[Option<EngineCall>],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        calls
            .iter()
            .map(|c| c.map(|c| (c.function, c.args)))
            .collect::<Vec<Option<Call>>>()
            .serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<Option<EngineCall>>, D::Error> {
        Ok(Vec::<Option<Call>>::deserialize(d)?
            .into_iter()
            .map(|c| c.map(|(function, args)| EngineCall { function, args }))
            .collect())
    }
}
