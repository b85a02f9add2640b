package ai.mvmoe.demo.core

/**
 * The metadata .json that `mvmoe export` writes beside every artifact (docs/apps.md, "Metadata").
 *
 * Only what the app needs is kept; unknown keys are ignored so newer exporters stay readable.
 * Errors name the key and the bad value: the app shows them instead of crashing.
 */
class MetadataException(message: String) : IllegalArgumentException(message)

enum class Layout { NCHW, NHWC }

data class InputSpec(
    val name: String,
    val shape: List<Int>,
    val layout: Layout,
    val mean: FloatArray,
    val std: FloatArray,
    val scale: Float,
    val preprocessingBakedIn: Boolean,
    /** Side of the centred square = round(min(H0, W0) * cropFraction); 1.0 = the largest square. */
    val cropFraction: Double = 1.0,
) {
    /** Model input height and width, read from the shape in the declared layout. */
    val height: Int get() = if (layout == Layout.NCHW) shape[2] else shape[1]
    val width: Int get() = if (layout == Layout.NCHW) shape[3] else shape[2]
    val channels: Int get() = if (layout == Layout.NCHW) shape[1] else shape[3]
}

data class Superclasses(val names: List<String>, val classToSuperclass: List<Int>)

/** The runtime release an artifact needs (`runtime` in the .json) and the platforms that can run it. */
data class RuntimeRequirement(val name: String, val minVersion: String?, val backend: String?, val platforms: List<String>)

/** Size and SHA-256 of the artifact file as exported (`artifact_file`). */
data class FileFingerprint(val bytes: Long, val sha256: String)

data class ModelMetadata(
    val model: String,
    val target: String,
    val backend: String?,
    val precision: String,
    val artifact: String,
    val input: InputSpec,
    val outputNames: List<String>,
    val labels: List<String>,
    val superclasses: Superclasses?,
    val experts: Int,
    val k: Int,
    val macs: Long?,
    /** "light-on-dark" for the digits models (bright strokes on a black ground), else null. */
    val polarity: String? = null,
    val runtime: RuntimeRequirement? = null,
    val paritySet: ParitySet? = null,
    val artifactFile: FileFingerprint? = null,
    /** Split artifacts (`--experts split`): the trunk and tail programs; null for one stacked program. */
    val programs: SplitPrograms? = null,
    /** LiteRT: the int8 ends of a static int8 model (the .json's ops.io_quantization); null = float ends. */
    val io: IoQuantization? = null,
    /** (delegated, total) ops from the exporter's audit (`ops`), when it counted them. */
    val opsDelegated: Pair<Int, Int>? = null,
    /** SHA-256 of the checkpoint the artifact was exported from; the benchmark file carries it. */
    val checkpointSha256: String? = null,
    /** The bundled sample at full size with PyTorch's outputs after the app preprocessing (`sample_check`). */
    val sampleCheck: SampleCheck? = null,
) {
    /** True when the artifact has the router's `expert_probs` output (per-image MoE). */
    val hasExpertProbs: Boolean get() = experts > 0 && "expert_probs" in outputNames
    val numClasses: Int get() = labels.size

    /** Position of the output called [name] in the artifact's output order, or -1. */
    fun outputIndex(name: String): Int = outputNames.indexOf(name)

    companion object {
        fun parse(text: String): ModelMetadata {
            val root = try {
                Json.parse(text)
            } catch (e: JsonException) {
                throw MetadataException("metadata is not valid JSON: ${e.message}")
            } as? Map<*, *> ?: throw MetadataException("metadata must be a JSON object")
            return fromMap(root)
        }

        fun fromMap(m: Map<*, *>): ModelMetadata {
            val inp = m["input"] as? Map<*, *> ?: throw MetadataException("metadata: missing object 'input'")
            val shape = ints(inp, "input.shape")
            if (shape.size != 4 || shape[0] != 1) throw MetadataException("metadata: input.shape must be [1, ., ., .], got $shape")
            val layoutName = str(inp, "input.layout")
            val layout = Layout.values().firstOrNull { it.name == layoutName }
                ?: throw MetadataException("metadata: input.layout must be NCHW or NHWC, got '$layoutName'")
            val dtype = inp["dtype"] ?: "float32"
            if (dtype != "float32") throw MetadataException("metadata: input.dtype must be float32, got '$dtype'")
            val resize = inp["resize"] ?: "center-crop-then-bilinear"
            if (resize != "center-crop-then-bilinear") throw MetadataException("metadata: unknown input.resize '$resize'")
            val pre = m["preprocessing"] as? Map<*, *>
            val cropFraction = (pre?.get("crop_fraction") as? Double) ?: 1.0
            if (!(cropFraction > 0.0 && cropFraction <= 1.0)) throw MetadataException("metadata: preprocessing.crop_fraction must be in (0, 1], got $cropFraction")
            if (pre != null && pre["interpolation"] != null && pre["interpolation"] != "bilinear") throw MetadataException(
                "metadata: preprocessing.interpolation '${pre["interpolation"]}' is not supported (bilinear only)")
            val spec = InputSpec(
                name = (inp["name"] as? String) ?: "image",
                shape = shape,
                layout = layout,
                mean = floats(inp, "input.mean", 3),
                std = floats(inp, "input.std", 3),
                scale = ((inp["scale"] as? Double) ?: 255.0).toFloat(),
                preprocessingBakedIn = (inp["preprocessing_baked_in"] as? Boolean) ?: false,
                cropFraction = cropFraction,
            )
            if (spec.channels != 3) throw MetadataException("metadata: the app feeds RGB, input has ${spec.channels} channels")
            if (spec.std.any { it <= 0f }) throw MetadataException("metadata: input.std must be > 0, got ${spec.std.toList()}")
            val labels = (m["labels"] as? List<*>)?.map { it as? String ?: throw MetadataException("metadata: labels must be strings") }
                ?: throw MetadataException("metadata: missing list 'labels'")
            val outputs = (m["outputs"] as? List<*>)?.map { ((it as? Map<*, *>)?.get("name") as? String) ?: "" } ?: listOf("logits")
            if ("logits" !in outputs) throw MetadataException("metadata: outputs must name 'logits', got $outputs")
            val sc = (m["superclasses"] as? Map<*, *>)?.let { s ->
                val names = (s["names"] as? List<*>)?.map { it.toString() } ?: throw MetadataException("metadata: superclasses.names missing")
                val c2s = ints(s, "superclasses.class_to_superclass")
                if (c2s.size != labels.size) throw MetadataException(
                    "metadata: superclasses.class_to_superclass has ${c2s.size} entries for ${labels.size} labels")
                if (c2s.any { it !in names.indices }) throw MetadataException("metadata: superclass id out of range in $c2s")
                Superclasses(names, c2s)
            }
            val experts = ((m["experts"] as? Double) ?: 0.0).toInt()
            return ModelMetadata(
                model = str(m, "model"),
                target = str(m, "target"),
                backend = m["backend"] as? String,
                precision = str(m, "precision"),
                artifact = str(m, "artifact"),
                input = spec,
                outputNames = outputs,
                labels = labels,
                superclasses = sc,
                experts = experts,
                k = ((m["k"] as? Double) ?: 0.0).toInt(),
                macs = (m["macs"] as? Double)?.toLong(),
                polarity = pre?.get("polarity") as? String,
                runtime = (m["runtime"] as? Map<*, *>)?.let { r ->
                    RuntimeRequirement(str(r, "runtime.name"), r["min_version"] as? String, r["backend"] as? String,
                        (r["platforms"] as? List<*>)?.map { it.toString() } ?: emptyList())
                },
                paritySet = (m["parity_set"] as? Map<*, *>)?.let { ParitySet.fromMap(it, labels.size) },
                opsDelegated = (m["ops"] as? Map<*, *>)?.let { o ->
                    val d = o["delegated"] as? Double
                    val t = o["total"] as? Double
                    if (d != null && t != null) d.toInt() to t.toInt() else null
                },
                artifactFile = (m["artifact_file"] as? Map<*, *>)?.let { f ->
                    FileFingerprint(((f["bytes"] as? Double) ?: -1.0).toLong(), str(f, "artifact_file.sha256"))
                },
                programs = SplitPrograms.fromMap(m["programs"] as? Map<*, *>),
                io = IoQuantization.fromMap((m["ops"] as? Map<*, *>)?.get("io_quantization") as? Map<*, *>, "ops.io_quantization"),
                checkpointSha256 = m["checkpoint_sha256"] as? String,
                sampleCheck = (m["sample_check"] as? Map<*, *>)?.let { SampleCheck.fromMap(it, labels.size) },
            )
        }

        private fun key(path: String) = path.substringAfterLast('.')

        private fun str(m: Map<*, *>, path: String): String =
            m[key(path)] as? String ?: throw MetadataException("metadata: missing string '$path'")

        private fun ints(m: Map<*, *>, path: String): List<Int> {
            val l = m[key(path)] as? List<*> ?: throw MetadataException("metadata: missing list '$path'")
            return l.map { v ->
                val d = v as? Double ?: throw MetadataException("metadata: '$path' must hold integers, got $l")
                if (d != Math.floor(d)) throw MetadataException("metadata: '$path' must hold integers, got $l")
                d.toInt()
            }
        }

        private fun floats(m: Map<*, *>, path: String, n: Int): FloatArray {
            val l = m[key(path)] as? List<*> ?: throw MetadataException("metadata: missing list '$path'")
            if (l.size != n || l.any { it !is Double }) throw MetadataException("metadata: '$path' must be $n numbers, got $l")
            return FloatArray(n) { (l[it] as Double).toFloat() }
        }
    }
}
