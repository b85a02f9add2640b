package ai.mvmoe.demo

import ai.mvmoe.demo.core.Artifacts
import ai.mvmoe.demo.core.FileStamp
import ai.mvmoe.demo.core.MetadataException
import ai.mvmoe.demo.core.ModelMetadata
import ai.mvmoe.demo.core.StaleCopy
import android.content.Context
import java.io.File

/** One exported model in assets/mvmoe/ (put there by `mvmoe export ... --app android`). */
data class ModelAsset(val meta: ModelMetadata, val assetPath: String) {
    val runtime: String get() = if (meta.target == "executorch") "executorch" else "litert"
}

/** Lists the artifacts Android can run that have a metadata .json beside them; problems are returned, not thrown. */
object ModelAssets {
    const val DIR = "mvmoe"

    /** The runtimes this APK bundles (gradle/libs.versions.toml, through BuildConfig). */
    val BUNDLED = mapOf("executorch" to BuildConfig.EXECUTORCH_VERSION, "litert" to BuildConfig.LITERT_VERSION)

    /** Reads and parses every .json in assets/mvmoe/: call off the main thread (App() runs it on Dispatchers.IO). */
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
            if (!Artifacts.runnableOn(meta, "android")) continue  // e.g. an executorch-coreml .pte or an .onnx
            if (meta.artifact !in files) {
                problems += "$json: ${meta.artifact} is missing beside it"
                continue
            }
            Artifacts.runtimeProblem(meta, BUNDLED)?.let { problems += it; continue }
            found += ModelAsset(meta, "$DIR/${meta.artifact}")
        }
        if (found.isEmpty()) problems += "No model in assets/mvmoe/. Run `mvmoe export CHECKPOINT --target tflite --app android` and rebuild."
        return found to problems
    }

    /**
     * ExecuTorch loads from a file path: copy the asset to the app's files dir, again whenever the copy
     * is stale (a re-exported .pte of the same name). The copy is hashed once, while it is written, and
     * its SHA-256 kept beside it (`<name>.sha256`): a load compares sizes and that stored hash with the
     * .json's `artifact_file` and reads no model bytes. Without `artifact_file`: size + the APK's
     * install time. Call off the main thread.
     */
    fun toFile(context: Context, asset: ModelAsset): File {
        val out = File(context.filesDir, asset.assetPath.substringAfterLast('/'))
        val hashFile = File(out.path + ".sha256")
        val installed = context.packageManager.getPackageInfo(context.packageName, 0).lastUpdateTime
        val sourceBytes = context.assets.openFd(asset.assetPath).use { it.length }  // stored uncompressed (noCompress)
        val copy = if (out.isFile) FileStamp(out.length(), out.lastModified(), hashFile.takeIf { it.isFile }?.readText()?.trim()) else null
        if (!StaleCopy.needsCopy(FileStamp(sourceBytes, installed), copy, asset.meta.artifactFile)) return out
        val tmp = File(out.path + ".tmp")
        val sha = context.assets.open(asset.assetPath).use { input -> tmp.outputStream().use { StaleCopy.copyHashing(input, it) } }
        check(tmp.renameTo(out)) { "cannot write $out" }
        hashFile.writeText(sha)
        return out
    }
}
