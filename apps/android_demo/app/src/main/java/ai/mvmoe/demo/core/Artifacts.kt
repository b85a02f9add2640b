package ai.mvmoe.demo.core

/**
 * Which artifacts a platform lists, whether its bundled runtime is new enough, and whether the copy
 * of an artifact in the app's files folder is stale. Platform-free: the app passes in file stamps.
 */
object Artifacts {
    /** True when [platform] ("android" or "ios") can run [meta]'s artifact. */
    fun runnableOn(meta: ModelMetadata, platform: String): Boolean {
        meta.runtime?.let { return platform in it.platforms }
        // older .json without `runtime`: decide from target and backend
        return when (platform) {
            "android" -> meta.target == "tflite" || (meta.target == "executorch" && meta.backend != "coreml")
            "ios" -> meta.target == "coreml"
            else -> false
        }
    }

    /** Compare dotted versions numerically ("1.10.0" > "1.9.2"); a missing part counts as 0, a suffix ("1.5.1rc1") is ignored. */
    fun compareVersions(a: String, b: String): Int {
        fun parts(v: String) = v.split('.').map { p -> p.takeWhile { it.isDigit() }.toIntOrNull() ?: 0 }
        val pa = parts(a)
        val pb = parts(b)
        for (i in 0 until maxOf(pa.size, pb.size)) {
            val c = pa.getOrElse(i) { 0 }.compareTo(pb.getOrElse(i) { 0 })
            if (c != 0) return c
        }
        return 0
    }

    /** Null when the bundled runtime (name -> version) can load [meta]'s artifact, else a message saying what to do. */
    fun runtimeProblem(meta: ModelMetadata, bundled: Map<String, String>): String? {
        val req = meta.runtime ?: return null
        val min = req.minVersion ?: return null
        val have = bundled[req.name] ?: return "${meta.artifact} needs ${req.name} >= $min, which this app does not include"
        if (compareVersions(have, min) >= 0) return null
        return "${meta.artifact} was exported with ${req.name} $min but the app has $have: " +
            "update ${req.name} in gradle/libs.versions.toml (or re-export with ${req.name} $have)"
    }
}

/** What the app knows about a file: size, modification time (ms) and, when computed, its SHA-256. */
data class FileStamp(val bytes: Long, val modifiedMs: Long, val sha256: String? = null)

object StaleCopy {
    /**
     * True when the copy must be (re)written from the source. With the exporter's fingerprint
     * ([expected], from `artifact_file`), the copy is current iff its size and hash match it; without,
     * iff it has the source's size and is not older than the source.
     */
    fun needsCopy(source: FileStamp, copy: FileStamp?, expected: FileFingerprint?): Boolean {
        if (copy == null) return true
        if (expected != null) return copy.bytes != expected.bytes || copy.sha256 != expected.sha256
        return copy.bytes != source.bytes || copy.modifiedMs < source.modifiedMs
    }

    /**
     * Copy [input] to [output] (none: only hash) and return the SHA-256 of the bytes read: the copy
     * is hashed once, when it is written, never when a model is loaded (neither stream is closed).
     */
    fun copyHashing(input: java.io.InputStream, output: java.io.OutputStream?): String {
        val md = java.security.MessageDigest.getInstance("SHA-256")
        val buf = ByteArray(1 shl 20)
        while (true) {
            val n = input.read(buf)
            if (n < 0) break
            md.update(buf, 0, n)
            output?.write(buf, 0, n)
        }
        return md.digest().joinToString("") { "%02x".format(it) }
    }

    /** SHA-256 of a stream, read in 1 MiB chunks (the stream is not closed). */
    fun sha256Hex(input: java.io.InputStream): String = copyHashing(input, null)
}
