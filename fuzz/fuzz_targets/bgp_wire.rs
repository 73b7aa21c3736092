//! The BGP wire parser on arbitrary input: the first byte picks 2- or 4-octet AS encoding, the
//! rest is the message. Parsing must not panic; what parses must re-emit to bytes that parse
//! to the same message; errors must carry a message-parsing NOTIFICATION code.
#![no_main]

use libfuzzer_sys::fuzz_target;

use metalnet::bgp::wire;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let ctx = wire::WireContext { four_octet_as: mode & 1 == 1 };
    let _ = wire::frame_len(data);
    match wire::Message::parse(data, ctx) {
        Ok((msg, used)) => {
            assert!(used <= data.len());
            let bytes = msg.to_bytes(ctx).expect("a parsed message re-emits");
            let (again, _) = wire::Message::parse(&bytes, ctx).expect("re-emitted bytes parse");
            assert_eq!(again, msg);
        }
        Err(e) => assert!((1..=3).contains(&e.code), "unexpected error code {e:?}"),
    }
});
