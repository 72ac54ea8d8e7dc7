"""scratchformer's training library: everything the commands do, as functions taking plain
arguments, with no argument parsing, no stdin and no printing (progress bars and log records aside).
Commands (`scratchformer.training.*`) parse flags, call into here, and print; pictures live in
`scratchformer.training.viz`. The library imports neither, and no module borrows another's `_private`
names (tests/training/test_layering.py holds it to all of that).

    data          text sources: files, hub datasets, the embedded corpus
    packing       text into fixed-length training blocks; bytes per token
    tokenizer_training  training a byte-level BPE tokenizer on a corpus, atomically
    pretrain_config  PretrainConfig (every pretraining flag), the model sizes, the checks on flags, and
                  RunPlan: the flags resolved once, saved in every checkpoint
    pretraining   train(): the pretraining run, as a story
    parallel      the Accelerator a run starts from; FSDP on CPU processes
    loop          the pieces the loop names: loss meter, signals, non-finite guard, lost processes
    layout        RunLayout: the names of everything a run writes under --output_dir, spelled once
    run_dir       how it is written: checkpoints, the metrics log, model/, hub push; resume
    optim         AdamW or Muon with AdamW, which parameters each moves; learning-rate schedules
    metrics       validation loss / perplexity / bits per byte, accuracy and F1 (entity-level: seqeval)
    bleu          corpus BLEU (sacrebleu's, with its signature; ours without it) and chrF
    evaluation    a checkpoint's loss / perplexity / bits per byte on any text (`scratchformer eval`)
    finetune_config  FinetuneArguments (what `finetune` is asked to do) and the tasks
    tasks         fine-tuning data: classification, token classification, language modelling, chat
    finetuning    fine-tuning with transformers.Trainer
    seq2seq       training the encoder-decoder with Seq2SeqTrainer
    generation    decoding settings, the prompt fitted to the context, generation into a streamer
    serving       transformers' own server (`transformers serve`) on a scratchformer checkpoint
    model_dir     the one gate every command loads a model directory through
    model_card    the README.md written beside every model
    convert       Llama / GPT-2 checkpoints into scratchformer
    export        scratchformer into stock Llama / GPT-2
    gguf          scratchformer into a GGUF file for llama.cpp (float and quantized types)
    doctor        which tools take a checkpoint: the interop suite's measured rules, a live load
    upgrade       refresh the code inside a saved checkpoint
    files         atomic_output, the one way an output is written (temporary name, then rename)
    errors        UserError, the one error a user can act on
"""
