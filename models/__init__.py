"""The liquid neural network (CfC) that predicts cascade onsets: definition, training and
export. torch is needed here only; the runtime path uses the exported ONNX file."""
