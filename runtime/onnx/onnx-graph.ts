// A small builder for ONNX graphs over the onnx-proto messages: initializers,
// nodes with generated value names, and encoding to ModelProto bytes. It knows no
// model; llama-graph.ts uses it. It is not a general ONNX toolkit: no shape
// inference, no checker, no external data.

import onnxProto from 'onnx-proto';

// onnx-proto is CommonJS with `module.exports = $root`, so only the default
// import is reliable under Node's ESM loader.
export const onnx = onnxProto.onnx;
type Onnx = typeof onnxProto.onnx;
export type NodeProto = ReturnType<Onnx['NodeProto']['create']>;
export type TensorProto = ReturnType<Onnx['TensorProto']['create']>;
export type AttributeProto = ReturnType<Onnx['AttributeProto']['create']>;
export type ValueInfoProto = ReturnType<Onnx['ValueInfoProto']['create']>;

const DataType = onnx.TensorProto.DataType;
const AttrType = onnx.AttributeProto.AttributeType;

/** A dimension is fixed (number) or named and dynamic (string). */
export type Dim = number | string;

// protobuf has a hard 2 GiB message limit; ORT refuses larger models too.
const PROTOBUF_LIMIT_BYTES = 2 ** 31 - 1;

export const attr = {
  int: (name: string, i: number): AttributeProto => onnx.AttributeProto.create({ name, type: AttrType.INT, i }),
  ints: (name: string, ints: readonly number[]): AttributeProto =>
    onnx.AttributeProto.create({ name, type: AttrType.INTS, ints: [...ints] }),
  float: (name: string, f: number): AttributeProto => onnx.AttributeProto.create({ name, type: AttrType.FLOAT, f }),
  tensor: (name: string, t: TensorProto): AttributeProto => onnx.AttributeProto.create({ name, type: AttrType.TENSOR, t }),
};

function bytesOf(view: ArrayBufferView): Uint8Array {
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

// ONNX raw_data is little-endian; every platform Node runs caravan on is too.
export function floatTensor(name: string, dims: readonly number[], data: Float32Array): TensorProto {
  return onnx.TensorProto.create({ name, dims: [...dims], dataType: DataType.FLOAT, rawData: bytesOf(data) });
}

export function int64Tensor(name: string, dims: readonly number[], values: readonly number[]): TensorProto {
  const data = BigInt64Array.from(values, (v) => BigInt(v));
  return onnx.TensorProto.create({ name, dims: [...dims], dataType: DataType.INT64, rawData: bytesOf(data) });
}

function valueInfo(name: string, elemType: number, dims: readonly Dim[]): ValueInfoProto {
  return onnx.ValueInfoProto.create({
    name,
    type: {
      tensorType: {
        elemType,
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  });
}

export interface ModelMeta {
  readonly graphName: string;
  readonly opset: number;
  readonly irVersion: number;
  readonly producerName: string;
  readonly docString?: string;
}

export class OnnxGraph {
  private readonly nodes: NodeProto[] = [];
  private readonly initializers: TensorProto[] = [];
  private readonly inputs: ValueInfoProto[] = [];
  private readonly outputs: ValueInfoProto[] = [];
  private readonly names = new Set<string>();
  private readonly int64Constants = new Map<string, string>();
  private readonly floatConstants = new Map<number, string>();
  private initializerBytes = 0;

  private claim(name: string): string {
    if (this.names.has(name)) throw new Error(`OnnxGraph: name ${name} is already used`);
    this.names.add(name);
    return name;
  }

  addInput(name: string, elemType: 'int64' | 'float32', dims: readonly Dim[]): string {
    this.inputs.push(valueInfo(this.claim(name), elemType === 'int64' ? DataType.INT64 : DataType.FLOAT, dims));
    return name;
  }

  /** Declares an existing value (a node output) as a graph output. */
  addOutput(name: string, elemType: 'int64' | 'float32', dims: readonly Dim[]): void {
    this.outputs.push(valueInfo(name, elemType === 'int64' ? DataType.INT64 : DataType.FLOAT, dims));
  }

  addFloatInitializer(name: string, dims: readonly number[], data: Float32Array): string {
    this.initializers.push(floatTensor(this.claim(name), dims, data));
    this.initializerBytes += data.byteLength;
    return name;
  }

  /** A shared int64 constant (shapes, axes, perms), created once per distinct value. */
  int64(values: readonly number[], scalar = false): string {
    const key = `${scalar ? 's' : 'v'}:${values.join(',')}`;
    let name = this.int64Constants.get(key);
    if (name === undefined) {
      name = this.claim(`const_i64_${this.int64Constants.size}`);
      this.initializers.push(int64Tensor(name, scalar ? [] : [values.length], values));
      this.int64Constants.set(key, name);
    }
    return name;
  }

  /** A shared float32 scalar constant. */
  float(value: number): string {
    let name = this.floatConstants.get(value);
    if (name === undefined) {
      name = this.claim(`const_f32_${this.floatConstants.size}`);
      this.initializers.push(floatTensor(name, [], Float32Array.of(value)));
      this.floatConstants.set(value, name);
    }
    return name;
  }

  /**
   * Adds a node named `name` and returns its output value names, which follow the
   * `<node>_output_<k>` pattern of the PyTorch exporter so profiles read the same.
   */
  nodeN(opType: string, name: string, inputs: readonly string[], nOutputs: number, attributes: AttributeProto[] = []): string[] {
    const outputs = Array.from({ length: nOutputs }, (_, k) => `${name}_output_${k}`);
    return this.push(opType, name, inputs, outputs, attributes);
  }

  /** Like node(), but its output gets a chosen name (for graph outputs). */
  nodeAs(output: string, opType: string, name: string, inputs: readonly string[], attributes: AttributeProto[] = []): string {
    return this.push(opType, name, inputs, [output], attributes)[0];
  }

  private push(opType: string, name: string, inputs: readonly string[], outputs: string[], attributes: AttributeProto[]): string[] {
    for (const output of outputs) this.claim(output);
    this.nodes.push(onnx.NodeProto.create({ name: this.claim(name), opType, input: [...inputs], output: outputs, attribute: attributes }));
    return outputs;
  }

  node(opType: string, name: string, inputs: readonly string[], attributes: AttributeProto[] = []): string {
    return this.nodeN(opType, name, inputs, 1, attributes)[0];
  }

  encode(meta: ModelMeta): Uint8Array {
    if (this.initializerBytes > PROTOBUF_LIMIT_BYTES) {
      throw new Error(
        `OnnxGraph ${meta.graphName}: ${this.initializerBytes} bytes of weights exceed the 2 GiB protobuf limit ` +
          `(external data is not supported by this builder)`,
      );
    }
    const model = onnx.ModelProto.create({
      irVersion: meta.irVersion,
      opsetImport: [{ domain: '', version: meta.opset }],
      producerName: meta.producerName,
      docString: meta.docString ?? '',
      graph: {
        name: meta.graphName,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
