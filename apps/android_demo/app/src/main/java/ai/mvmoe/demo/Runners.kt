package ai.mvmoe.demo

import ai.mvmoe.demo.core.Postprocess
import android.content.Context
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** Raw model outputs: logits (N) and, for per-image MoE, the router's expert probabilities (E). */
class Outputs(val logits: FloatArray, val expertProbs: FloatArray?)

/**
 * One loaded artifact. [run] feeds the flat input (already in the layout of input.shape) and runs the
 * model — that call alone is what the benchmark times; [outputs] reads the results of the last run.
 * Create runners off the main thread (model load, and the .pte copy, take time).
 */
interface Runner : AutoCloseable {
    val runtime: String       // benchmark file: litert | executorch
    val computeUnits: String  // benchmark file: cpu | gpu
    val threads: Int?
    /** Where the model runs, for the screen: accelerator and delegation. */
    val accelerator: String
    fun run(input: FloatArray)
    fun outputs(): Outputs

    fun infer(input: FloatArray): Outputs { run(input); return outputs() }

    companion object {
        fun create(context: Context, asset: ModelAsset, computeUnits: String): Runner = when (asset.runtime) {
            "executorch" -> ExecuTorchRunner(context, asset)
            else -> LiteRtRunner(context, asset, computeUnits)
        }

        /** Outputs are picked by the names and order the .json gives (never by length). */
        fun split(asset: ModelAsset, outs: List<FloatArray>): Outputs {
            val (logits, experts) = Postprocess.splitOutputs(asset.meta, outs)
            return Outputs(logits, experts)
        }
    }
}

/** LiteRT CompiledModel API (com.google.ai.edge.litert 2.x) on the CPU (XNNPACK) or the GPU accelerator. */
class LiteRtRunner(context: Context, private val asset: ModelAsset, override val computeUnits: String) : Runner {
    override val runtime = "litert"
    override val threads: Int? = null  // LiteRT picks the CPU thread count itself
    private val model = CompiledModel.create(
        context.assets, asset.assetPath,
        CompiledModel.Options(if (computeUnits == "gpu") Accelerator.GPU else Accelerator.CPU),
    )
    private val inputs = model.createInputBuffers()
    private val outputs = model.createOutputBuffers()

    // The .json's `ops` block says how much of the graph the exporter saw delegated (XNNPACK on the
    // desktop); ops the GPU delegate rejects fall back to the CPU, which LiteRT logs to logcat.
    override val accelerator: String = "LiteRT ${computeUnits.uppercase()}" +
        (asset.meta.opsDelegated?.let { (d, t) -> ", $d/$t ops delegated at export" } ?: "")

    override fun run(input: FloatArray) {
        inputs[0].writeFloat(input)
        model.run(inputs, outputs)
    }

    override fun outputs(): Outputs = Runner.split(asset, outputs.map { it.readFloat() })

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }
}

/** ExecuTorch Android module (org.pytorch.executorch), memory-mapped; XNNPACK-lowered .pte runs on the CPU. */
class ExecuTorchRunner(context: Context, private val asset: ModelAsset) : Runner {
    override val runtime = "executorch"
    override val computeUnits = "cpu"
    override val threads: Int? = null  // XNNPACK's default thread pool
    override val accelerator = "ExecuTorch ${asset.meta.backend ?: "portable"} (CPU)"
    private val module = Module.load(ModelAssets.toFile(context, asset).absolutePath, Module.LOAD_MODE_MMAP)
    private val shape = asset.meta.input.shape.map { it.toLong() }.toLongArray()
    private var last: Array<EValue> = emptyArray()

    override fun run(input: FloatArray) {
        last = module.forward(EValue.from(Tensor.fromBlob(input, shape)))
    }

    override fun outputs(): Outputs = Runner.split(asset, last.map { it.toTensor().dataAsFloatArray })

    override fun close() = module.destroy()
}
