package ai.mvmoe.demo

import ai.mvmoe.demo.core.ModelMetadata
import android.content.Context
import com.google.ai.edge.litert.Accelerator
import com.google.ai.edge.litert.CompiledModel
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor

/** Raw model outputs: logits (N) and, for per-image MoE, the router's expert probabilities (E). */
class Outputs(val logits: FloatArray, val expertProbs: FloatArray?)

/** One loaded artifact. `run` takes the flat input already in the layout of input.shape. */
interface Runner : AutoCloseable {
    val runtime: String       // contract D: litert | executorch
    val computeUnits: String  // contract D: cpu | gpu
    val threads: Int?
    fun run(input: FloatArray): Outputs

    companion object {
        fun create(context: Context, asset: ModelAsset, computeUnits: String): Runner = when (asset.runtime) {
            "executorch" -> ExecuTorchRunner(context, asset)
            else -> LiteRtRunner(context, asset, computeUnits)
        }

        /** Outputs are told apart by length (N logits, E experts), so output order does not matter. */
        fun split(meta: ModelMetadata, outs: List<FloatArray>): Outputs {
            val logits = outs.firstOrNull { it.size == meta.numClasses }
                ?: error("no output with ${meta.numClasses} logits (got sizes ${outs.map { it.size }})")
            val experts = if (meta.hasExpertProbs) outs.firstOrNull { it !== logits && it.size == meta.experts } else null
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

    override fun run(input: FloatArray): Outputs {
        inputs[0].writeFloat(input)
        model.run(inputs, outputs)
        return Runner.split(asset.meta, outputs.map { it.readFloat() })
    }

    override fun close() {
        inputs.forEach { it.close() }
        outputs.forEach { it.close() }
        model.close()
    }
}

/** ExecuTorch Android module (org.pytorch.executorch); XNNPACK-lowered .pte runs on the CPU. */
class ExecuTorchRunner(context: Context, private val asset: ModelAsset) : Runner {
    override val runtime = "executorch"
    override val computeUnits = "cpu"
    override val threads: Int? = null
    private val module = Module.load(ModelAssets.toFile(context, asset.assetPath).absolutePath)
    private val shape = asset.meta.input.shape.map { it.toLong() }.toLongArray()

    override fun run(input: FloatArray): Outputs {
        val out = module.forward(EValue.from(Tensor.fromBlob(input, shape)))
        return Runner.split(asset.meta, out.map { it.toTensor().dataAsFloatArray })
    }

    override fun close() = module.destroy()
}
