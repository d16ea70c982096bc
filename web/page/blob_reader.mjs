// Reads the Blobs it is sent ({id, blob}) and hands their bytes back ({id, bytes}, transferred). A Blob's read
// advances only while its thread is free, and the page's main thread is busy creating onnxruntime's sessions while
// the weights are read (ort_bridge.mjs fillWeights): here the reads go on meanwhile.
onmessage = async ({ data: { id, blob } }) => {
  try {
    const bytes = await blob.arrayBuffer();
    postMessage({ id, bytes }, [bytes]);
  } catch (e) {
    postMessage({ id, error: `could not read a file from the browser storage (${e.name}: ${e.message})` });
  }
};
