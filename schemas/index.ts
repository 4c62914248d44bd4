// The wire format's public surface: pure types, validation and encodings.
export * from './model-config.ts';
export * from './tensor-frame.ts';
export * from './run-config.ts';
export * from './json-message.ts';
export * from './control-messages.ts';
export * from './run-records.ts';
