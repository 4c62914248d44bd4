// The wire format's public surface: pure types, validation and encodings.
export * from './model-config.ts';
export * from './tensor-frame.ts';
export * from './run-config.ts';
