package ai.mvmoe.demo

import ai.mvmoe.demo.core.MetadataException
import ai.mvmoe.demo.core.ModelMetadata
import android.content.Context
import java.io.File

/** One exported model in assets/mvmoe/ (put there by `mvmoe export ... --app android`). */
data class ModelAsset(val meta: ModelMetadata, val assetPath: String) {
    val runtime: String get() = if (meta.target == "executorch") "executorch" else "litert"
}

/** Lists the .tflite / .pte artifacts that have a metadata .json beside them; problems are returned, not thrown. */
object ModelAssets {
    const val DIR = "mvmoe"

    fun list(context: Context): Pair<List<ModelAsset>, List<String>> {
        val files = context.assets.list(DIR)?.toSet() ?: emptySet()
        val found = mutableListOf<ModelAsset>()
        val problems = mutableListOf<String>()
        for (json in files.filter { it.endsWith(".json") }.sorted()) {
            val text = context.assets.open("$DIR/$json").bufferedReader().use { it.readText() }
            val meta = try {
                ModelMetadata.parse(text)
            } catch (e: MetadataException) {
                problems += "$json: ${e.message}"
                continue
            }
            if (meta.target != "tflite" && meta.target != "executorch") continue  // e.g. an .onnx copied by hand
            if (meta.artifact !in files) {
                problems += "$json: ${meta.artifact} is missing beside it"
                continue
            }
            found += ModelAsset(meta, "$DIR/${meta.artifact}")
        }
        if (found.isEmpty()) problems += "No model in assets/mvmoe/. Run `mvmoe export CHECKPOINT --target tflite --app android` and rebuild."
        return found to problems
    }

    /** ExecuTorch loads from a file path: copy the asset to the app's files dir once (atomically). */
    fun toFile(context: Context, assetPath: String): File {
        val out = File(context.filesDir, assetPath.substringAfterLast('/'))
        if (out.isFile) return out
        val tmp = File(out.path + ".tmp")
        context.assets.open(assetPath).use { input -> tmp.outputStream().use { input.copyTo(it) } }
        check(tmp.renameTo(out)) { "cannot write $out" }
        return out
    }
}
