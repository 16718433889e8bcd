//! The SDK's entry point, alone: `proxy_wasm::main!` exports a `#[no_mangle]` function, which the
//! `unsafe_code` lint counts as unsafe. This is the only place the crate allows it; every other module
//! forbids unsafe code.

#![allow(unsafe_code)]

proxy_wasm::main! {{
    crate::filter::start();
}}
