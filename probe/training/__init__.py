"""Writing runs: `probe train`'s loop and config, `probe.Recorder` for any loop, and
`probe import`."""
